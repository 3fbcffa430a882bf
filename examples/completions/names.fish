
# Lock names for the NAME argument of acquire, release, exec and renew (and the
# names of status), from `dlock status --names-only` with the --url, --url-file
# and --prefix typed on the line; DLOCK_* in the environment apply as usual.
# Appended to clap's completion by examples/gen-docs.rs.

# Prints the options to list names with when the token being completed is a
# lock name; fails otherwise.
function __fish_dlock_name_args
    set -l cmd (commandline -opc)
    set -l sub
    set -l skip
    set -l given 0
    for w in $cmd[2..-1]
        if test -n "$skip"
            test "$skip" = keep; and echo $w
            set skip
            continue
        end
        switch $w
            case --
                return 1
            case --url --url-file --prefix
                echo $w
                set skip keep
            case '--url=*' '--url-file=*' '--prefix=*'
                echo $w
            case --lease --wait -E --conflict-exit-code --on-lost-signal --kill-after --min-hold --max-runtime --jitter -c --shell --connect-timeout --log-format --token --keepalive-pid
                set skip drop
            case '-*'
            case '*'
                if test -z "$sub"
                    set sub $w
                else
                    set given (math $given + 1)
                end
        end
    end
    test -z "$skip"; or return 1
    switch $sub
        case acquire release exec renew
            test $given -eq 0
        case status
            return 0
        case '*'
            return 1
    end
end

function __fish_dlock_lock_names
    set -l cmd (commandline -opc)
    $cmd[1] (__fish_dlock_name_args) --connect-timeout 1s status --names-only 2>/dev/null
end

complete -c dlock -n "__fish_dlock_name_args >/dev/null" -f -a "(__fish_dlock_lock_names)" -d 'held lock'
