"""One ResultCode enum: every code has one exit status, and a code travels
as its plain text."""

from __future__ import annotations

import pytest

from peercrypt import errors
from peercrypt.errors import ResultCode
from peercrypt.wire import codec
from peercrypt.wire.messages import SendResult

EXPECTED = {
    ResultCode.OK: 0,
    ResultCode.LOCAL: 2,
    ResultCode.MULTICAST_DEFAULT: 2,  # the CLI sends it again as a multicast
    ResultCode.UNREACHABLE: 3,
    ResultCode.HANDSHAKE: 4,
    ResultCode.NOT_ADMITTED: 4,
    ResultCode.IMPOSTOR: 4,  # the receiver's proof of identity failed
    ResultCode.UNTRUSTED: 4,  # a proven key the sender does not trust at that address
    ResultCode.REFUSED: 5,
}


@pytest.mark.parametrize("code", list(ResultCode))
def test_every_code_has_its_exit_status(code: ResultCode) -> None:
    assert errors.exit_code(code) == EXPECTED.get(code, errors.FAILED)
    assert errors.exit_code(code.value) == errors.exit_code(code)


def test_text_that_is_no_code_is_a_failure() -> None:
    assert errors.exit_code("no-such-code") == errors.FAILED
    assert errors.exit_code("") == errors.FAILED


@pytest.mark.parametrize("code", list(ResultCode))
def test_a_code_travels_as_its_text(code: ResultCode) -> None:
    msg = SendResult(request=1, code=code, reason="", size=0, digest=b"", stored_as="")
    back = codec.decode_as(codec.encode(msg), SendResult)
    assert type(back.code) is str and back.code == code.value
    assert ResultCode(back.code) is code
