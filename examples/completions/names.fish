
# Lock names for the NAME argument and --also of acquire, release, exec and
# renew (and the names of status and watch), from `dlock status --names-only`
# with the --url, --url-file and --prefix typed on the line; DLOCK_* in the
# environment apply as usual. Exec's command completes as a command of its
# own. Appended to clap's completion by examples/gen-docs.rs, which fills in
# the options that take a value from the clap definition and keeps clap's exec
# options out of the command.

# Prints what the token being completed is: "name" (a lock name; the global
# __fish_dlock_args gets the --url, --url-file and --prefix words to list
# names with), "command" (exec's command; __fish_dlock_rest gets its words
# typed so far) or "other", where clap's completion applies.
function __fish_dlock_where
    set -l cmd (commandline -opc)
    set -g __fish_dlock_args
    set -g __fish_dlock_rest
    set -l sub
    set -l skip
    set -l given 0
    set -l ended
    set -l shell
    set -l i 1
    for w in $cmd[2..-1]
        set i (math $i + 1)
        if test -n "$skip"
            test "$skip" = keep; and set -a __fish_dlock_args $w
            set skip
            continue
        end
        if test -z "$ended"
            switch $w
                case --
                    if test "$sub" != exec
                        echo other
                        return
                    end
                    set ended 1
                    continue
                case --url --url-file --prefix
                    set -a __fish_dlock_args $w
                    set skip keep
                    continue
                case '--url=*' '--url-file=*' '--prefix=*'
                    set -a __fish_dlock_args $w
                    continue
                case -c --shell
                    set shell 1
                    set skip drop
                    continue
                case '--shell=*'
                    set shell 1
                    continue
                case --also
                    set skip name
                    continue
                case @VALUE_OPTIONS@
                    set skip drop
                    continue
                case '-*'
                    continue
            end
        end
        if test -z "$sub"
            set sub $w
            continue
        end
        set given (math $given + 1)
        if test "$sub" = exec -a $given -eq 2 -a -z "$shell"
            set -g __fish_dlock_rest $cmd[$i..-1]
            echo command
            return
        end
    end
    # The value of --also is a lock name too.
    if test "$skip" = name
        echo name
        return
    end
    if test -n "$skip"
        echo other
        return
    end
    # A dash starts one of dlock's own options, until `--`.
    if test -z "$ended"; and string match -q -- '-*' (commandline -ct)
        echo other
        return
    end
    switch $sub
        case exec
            if test $given -eq 0
                echo name
                return
            else if test $given -eq 1 -a -z "$shell"
                echo command
                return
            end
        case acquire release renew
            if test $given -eq 0
                echo name
                return
            end
        case status watch
            echo name
            return
    end
    echo other
end

function __fish_dlock_lock_names
    __fish_dlock_where >/dev/null
    set -l cmd (commandline -opc)
    $cmd[1] $__fish_dlock_args --connect-timeout 1s status --names-only 2>/dev/null
end

# The same, each described, for the value of --also (whose own line would
# describe each with the option's help).
function __fish_dlock_held_locks
    for n in (__fish_dlock_lock_names)
        printf '%s\theld lock\n' $n
    end
end

# Exec's command, completed as fish completes that command line by itself.
function __fish_dlock_command
    __fish_dlock_where >/dev/null
    set -l words (string escape -- $__fish_dlock_rest) (commandline -ct)
    complete -C (string join ' ' -- $words)
end

complete -c dlock -n 'test (__fish_dlock_where) = name' -f -a '(__fish_dlock_lock_names)' -d 'held lock'
complete -c dlock -n 'test (__fish_dlock_where) = command' -f -a '(__fish_dlock_command)'
