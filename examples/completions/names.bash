
# Lock names for the NAME argument of acquire, release, exec and renew (and the
# names of status), from `dlock status --names-only` with the --url, --url-file
# and --prefix typed on the line; DLOCK_* in the environment apply as usual.
# Appended to clap's completion by examples/gen-docs.rs.

# Prints the options to list names with, one per line, when the word being
# completed is a lock name; fails otherwise.
_dlock_name_args() {
    local line=${COMP_LINE:0:COMP_POINT} words=() i w sub="" skip="" given=0
    read -ra words <<<"$line"
    local last=$((${#words[@]} - 1))
    [[ $line == *[[:space:]] ]] && last=${#words[@]}
    for ((i = 1; i < last; i++)); do
        w=${words[i]}
        if [[ -n $skip ]]; then
            [[ $skip == keep ]] && printf '%s\n' "$w"
            skip=""
            continue
        fi
        case $w in
        --) return 1 ;;
        --url | --url-file | --prefix) printf '%s\n' "$w"; skip=keep ;;
        --url=* | --url-file=* | --prefix=*) printf '%s\n' "$w" ;;
        --lease | --wait | -E | --conflict-exit-code | --on-lost-signal | --kill-after | \
            --min-hold | --max-runtime | --jitter | -c | --shell | --connect-timeout | \
            --log-format | --token | --keepalive-pid) skip=drop ;;
        -*) ;;
        *) if [[ -z $sub ]]; then sub=$w; else given=$((given + 1)); fi ;;
        esac
    done
    [[ -z $skip ]] || return 1
    case $sub in
    acquire | release | exec | renew) ((given == 0)) ;;
    status) return 0 ;;
    *) return 1 ;;
    esac
}

_dlock_with_names() {
    local cur=${COMP_WORDS[COMP_CWORD]} opts names name
    if [[ $cur != -* ]] && opts=$(_dlock_name_args); then
        local args=()
        [[ -z $opts ]] || mapfile -t args <<<"$opts"
        names=$("${COMP_WORDS[0]}" "${args[@]}" --connect-timeout 1s status --names-only 2>/dev/null)
        if [[ -n $names ]]; then
            COMPREPLY=()
            while IFS= read -r name; do
                [[ $name == "$cur"* ]] && COMPREPLY+=("$(printf '%q' "$name")")
            done <<<"$names"
            return 0
        fi
    fi
    _dlock "$@"
}
