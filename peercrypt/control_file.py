"""The rendezvous of a node and its local clients: ``DATA_DIR/control.json``
(mode 0600; the control socket's endpoint, its token and the node's pid),
written by the control actor, read by :mod:`peercrypt.client`. Its own
module so that a client reaching a running node imports none of the node's
settings."""

CONTROL_FILE = "control.json"
