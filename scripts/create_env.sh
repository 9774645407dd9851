#!/usr/bin/env bash
# Write a .env for PeerCrypt (read by `peercrypt` in that directory and by
# docker compose), with a freshly generated network key.
#
#   scripts/create_env.sh                 # asks for each setting (Enter keeps the default)
#   scripts/create_env.sh --yes --mode aimd --aimd-window 32 --output deploy/.env
#
# Options (each sets the variable of the same name; see docs/commands.md):
#   --mode MODE  --gossip-interval S  --disable-gossip  --aimd-window KB
#   --aimd-min-window KB  --aimd-max-window KB  --parallel-threads N
#   --max-retries N  --timeout S  --health-check-interval S
#   --output FILE (default ./.env)  --force (overwrite)  --yes (ask nothing)
#   --key-from-env (use $PEERCRYPT_NETWORK_KEY instead of a new key)
# It runs peercrypt with $PYTHON if set, else the repository's .venv, else
# the `peercrypt` on PATH. A value it refuses is named as given
# (`--mode fast`: what the mode takes), and nothing is written.
# The key is written to the file (mode 600) and never printed. The file is
# checked with `peercrypt config show` before the script says it is done.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then  # an interpreter with peercrypt installed
    peercrypt=("$PYTHON" -m peercrypt)
elif [[ -x "$here/.venv/bin/python" ]]; then
    peercrypt=("$here/.venv/bin/python" -m peercrypt)
elif command -v peercrypt >/dev/null; then
    peercrypt=(peercrypt)
else
    peercrypt=(python3 -m peercrypt)
fi

die() { echo "create_env.sh: error: $*" >&2; exit 2; }

# variable, option, prompt, default
settings=(
    "DEFAULT_MODE|--mode|default transfer mode (normal, token-bucket, aimd, qos, parallel, multicast)|normal"
    "GOSSIP_INTERVAL|--gossip-interval|seconds between gossip rounds|5.0"
    "DISABLE_GOSSIP|--disable-gossip|start with gossip off (true/false)|false"
    "AIMD_WINDOW|--aimd-window|AIMD initial window, KB|4096"
    "AIMD_MIN_WINDOW|--aimd-min-window|AIMD minimum window, KB|256"
    "AIMD_MAX_WINDOW|--aimd-max-window|AIMD maximum window, KB|16384"
    "PARALLEL_THREADS|--parallel-threads|lanes of parallel mode|4"
    "MAX_RETRIES|--max-retries|retries of a network operation|3"
    "CONNECTION_TIMEOUT|--timeout|seconds one attempt waits for a peer|3.0"
    "HEALTH_CHECK_INTERVAL|--health-check-interval|seconds between health checks|10.0"
)
declare -A given=()
declare -A said=()  # each value as the user gave it: "--mode fast"
output=".env"
force=0
ask=1
key_from_env=0
[[ -t 0 ]] || ask=0

while (($#)); do
    case "$1" in
        --output) (($# >= 2)) || die "--output needs a file"; output="$2"; shift 2 ;;
        --force) force=1; shift ;;
        --yes|-y) ask=0; shift ;;
        --key-from-env) key_from_env=1; shift ;;
        --disable-gossip) given[DISABLE_GOSSIP]=true; said[DISABLE_GOSSIP]="$1"; shift ;;
        -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *)
            found=""
            for entry in "${settings[@]}"; do
                IFS='|' read -r var opt _ _ <<<"$entry"
                if [[ "$1" == "$opt" ]]; then found="$var"; fi
            done
            [[ -n "$found" ]] || die "unknown option $1 (see --help)"
            (($# >= 2)) || die "$1 needs a value"
            given[$found]="$2"
            said[$found]="$1 $2"
            shift 2
            ;;
    esac
done

[[ ! -e "$output" || $force == 1 ]] || die "$output exists (use --force to overwrite)"

if ((key_from_env)); then
    [[ -n "${PEERCRYPT_NETWORK_KEY:-}" ]] || die "--key-from-env: PEERCRYPT_NETWORK_KEY is not set"
    key="$PEERCRYPT_NETWORK_KEY"
else
    key="$("${peercrypt[@]}" keygen)" || die "cannot generate a network key"
fi

lines=()
checked=()  # VAR=value of each setting given, for the check below
for entry in "${settings[@]}"; do
    IFS='|' read -r var _ question default <<<"$entry"
    value="${given[$var]:-}"
    if [[ -z "$value" && $ask == 1 ]]; then
        read -r -p "$question [$default]: " value </dev/tty || value=""
        said[$var]="the answer '$value' to \"$question\""
    fi
    if [[ -n "$value" ]]; then
        lines+=("$var=$value")
        checked+=("$var=$value")
    else
        lines+=("# $var=$default")  # the default; AIMD bounds left out follow the window
    fi
done

# Check the settings the way the node reads them, before anything is written;
# an error names the value as the user gave it (`--mode fast`), not the
# variable of a file the user never saw.
# Neither check reads this shell's settings: the file's alone are checked.
unset_ours=()
for name in $(compgen -e); do
    [[ "$name" == PEERCRYPT_* ]] && unset_ours+=(-u "$name")
done
for entry in "${settings[@]}"; do
    IFS='|' read -r var _ _ _ <<<"$entry"
    unset_ours+=(-u "$var")
done
check_dir="$(mktemp -d)"
trap 'rm -rf "$check_dir"' EXIT
# (the config show of a directory with no .env: the values come from its environment)
if ! error="$(cd "$check_dir" && env "${unset_ours[@]}" PEERCRYPT_NETWORK_KEY="$key" "${checked[@]}" \
        "${peercrypt[@]}" --data-dir "$check_dir/data" config show 2>&1 >/dev/null)"; then
    line="$(grep -m1 '^peercrypt: error: ' <<<"$error" || printf '%s' "$error" | tail -n1)"
    line="${line#peercrypt: error: }"
    if [[ "$line" =~ ^([A-Z_]+)= && -n "${said[${BASH_REMATCH[1]}]:-}" ]]; then
        # VAR='value': why
        die "${said[${BASH_REMATCH[1]}]}: ${line#*\': }; nothing written"
    elif [[ "$line" == "network_key (environment): "* ]]; then
        if ((key_from_env)); then
            die "--key-from-env: \$PEERCRYPT_NETWORK_KEY: ${line#*: }; nothing written"
        fi
        die "the new network key: ${line#*: }; nothing written"
    fi
    # Between settings (AIMD windows): each variable named as its option.
    for entry in "${settings[@]}"; do
        IFS='|' read -r var opt _ _ <<<"$entry"
        line="$(sed -E "s/\b$var=([^ ]*) \(environment\)/$opt \1/g; s/\b$var=([^ ]*) \(default\)/$opt \1 (the default)/g; s/\b$var\b/$opt/g" <<<"$line")"
    done
    die "$line; nothing written"
fi
rm -rf "$check_dir"
trap - EXIT

tmp="$(mktemp "$(dirname "$output")/.env.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
chmod 600 "$tmp"
{
    echo "# PeerCrypt settings (docs/commands.md, \"Configuration\"); written by scripts/create_env.sh"
    echo "# The network key: every node of your network needs the same one. Keep it secret."
    echo "PEERCRYPT_NETWORK_KEY=$key"
    printf '%s\n' "${lines[@]}"
} >"$tmp"

# Check the file as the node will read it (a value the file holds otherwise
# than given); stop before it replaces anything.
check_dir="$(mktemp -d)"
trap 'rm -f "$tmp"; rm -rf "$check_dir"' EXIT
cp "$tmp" "$check_dir/.env"
if ! error="$(cd "$check_dir" && env "${unset_ours[@]}" "${peercrypt[@]}" \
        --data-dir "$check_dir/data" config show 2>&1 >/dev/null)"; then
    line="$(grep -m1 '^peercrypt: error: ' <<<"$error" || printf '%s' "$error" | tail -n1)"
    line="${line#peercrypt: error: }"
    die "$output would not be read as given: ${line//"$check_dir/.env"/$output}; nothing written"
fi
rm -rf "$check_dir"
mv "$tmp" "$output"
trap - EXIT
if ((key_from_env)); then
    what="the network key of \$PEERCRYPT_NETWORK_KEY"
else
    what="a new network key"
fi
echo "wrote $output (mode 600) with $what; \`peercrypt config show\` there shows every setting"
