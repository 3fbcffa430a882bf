
# Lock names for the NAME argument and --also of acquire, release, exec and
# renew (and the names of status and watch), from `dlock status --names-only`
# with the --url, --url-file and --prefix typed on the line; DLOCK_* in the
# environment apply as usual. Exec's command completes as a command of its
# own. Appended to clap's completion by examples/gen-docs.rs, which fills in
# the options that take a value from the clap definition.

# Sets _dlock_at to what the word being completed is: "name" (a lock name;
# _dlock_args gets the --url, --url-file and --prefix words to list names
# with) or "command" (exec's command; _dlock_cmd is the index in COMP_WORDS
# of its first word); empty where clap's completion applies.
_dlock_locate() {
    local line=${COMP_LINE:0:COMP_POINT} words=() i w sub="" skip="" given=0 ended="" shell=""
    read -ra words <<<"$line"
    local last=$((${#words[@]} - 1))
    [[ $line == *[[:space:]] ]] && last=${#words[@]}
    _dlock_at="" _dlock_args=() _dlock_cmd=0
    for ((i = 1; i < last; i++)); do
        w=${words[i]}
        if [[ -n $skip ]]; then
            [[ $skip == keep ]] && _dlock_args+=("$w")
            skip=""
            continue
        fi
        if [[ -z $ended ]]; then
            case $w in
            --)
                [[ $sub == exec ]] || return 0
                ended=1
                continue
                ;;
            --url | --url-file | --prefix) _dlock_args+=("$w"); skip=keep; continue ;;
            --url=* | --url-file=* | --prefix=*) _dlock_args+=("$w"); continue ;;
            -c | --shell) shell=1; skip=drop; continue ;;
            --also) skip=name; continue ;;
            --shell=*) shell=1; continue ;;
            @VALUE_OPTIONS@) skip=drop; continue ;;
            -*) continue ;;
            esac
        fi
        if [[ -z $sub ]]; then
            sub=$w
            continue
        fi
        given=$((given + 1))
        if [[ $sub == exec && -z $shell ]] && ((given == 2)); then
            _dlock_at=command _dlock_cmd=$((COMP_CWORD - (last - i)))
            return 0
        fi
    done
    # The value of --also is a lock name too.
    [[ $skip == name ]] && _dlock_at=name
    [[ -z $skip ]] || return 0
    # A dash starts one of dlock's own options, until `--`.
    [[ -n $ended || ${words[last]-} != -* ]] || return 0
    case $sub in
    exec)
        if ((given == 0)); then
            _dlock_at=name
        elif ((given == 1)) && [[ -z $shell ]]; then
            _dlock_at=command _dlock_cmd=$COMP_CWORD
        fi
        ;;
    acquire | release | renew) ((given == 0)) && _dlock_at=name ;;
    status | watch) _dlock_at=name ;;
    esac
    return 0
}

# Completes exec's command, which starts at COMP_WORDS index $1: with
# bash-completion loaded, as that command's own completion would; without
# it, command names for its first word and file names after that.
_dlock_command() {
    local cur=${COMP_WORDS[COMP_CWORD]}
    if declare -F _command_offset >/dev/null; then
        _command_offset "$1"
    elif ((COMP_CWORD == $1)); then
        mapfile -t COMPREPLY < <(compgen -c -- "$cur" | sort -u)
    else
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        compopt -o filenames 2>/dev/null
    fi
    return 0
}

_dlock_with_names() {
    local cur=${COMP_WORDS[COMP_CWORD]} _dlock_at _dlock_args _dlock_cmd names name
    _dlock_locate
    case $_dlock_at in
    command)
        _dlock_command "$_dlock_cmd"
        return 0
        ;;
    name)
        COMPREPLY=()
        names=$("${COMP_WORDS[0]}" "${_dlock_args[@]}" --connect-timeout 1s status --names-only 2>/dev/null)
        while IFS= read -r name; do
            [[ -n $name && $name == "$cur"* ]] && COMPREPLY+=("$(printf '%q' "$name")")
        done <<<"$names"
        # A lock name goes here: neither dlock's options nor file names.
        compopt +o default +o bashdefault 2>/dev/null
        return 0
        ;;
    esac
    _dlock "$@"
}
