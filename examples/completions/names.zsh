
# Lock names for the NAME argument and --also of acquire, release, exec and
# renew (and the names of status and watch), from `dlock status --names-only`
# with the --url, --url-file and --prefix typed after the subcommand; DLOCK_*
# in the environment apply as usual. Added to clap's completion by
# examples/gen-docs.rs.
(( $+functions[_dlock_lock_names] )) ||
_dlock_lock_names() {
    local -a names args
    local i
    for (( i = 2; i < CURRENT; i++ )); do
        case $words[i] in
            (--url|--url-file|--prefix) args+=($words[i] ${(Q)words[i+1]}) ;;
            (--url=*|--url-file=*|--prefix=*) args+=(${(Q)words[i]}) ;;
        esac
    done
    names=(${(f)"$(dlock $args --connect-timeout 1s status --names-only 2>/dev/null)"})
    compadd -a names
}
