# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_dlock_global_optspecs
    string join \n url= url-file= prefix= connect-timeout= q/quiet v/verbose log-format= h/help V/version
end

function __fish_dlock_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_dlock_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_dlock_using_subcommand
    set -l cmd (__fish_dlock_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c dlock -n "__fish_dlock_needs_command" -l url -d 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]' -r
complete -c dlock -n "__fish_dlock_needs_command" -l url-file -d 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)' -r -F
complete -c dlock -n "__fish_dlock_needs_command" -l prefix -d 'Namespace for every key, table row and channel dlock uses' -r
complete -c dlock -n "__fish_dlock_needs_command" -l connect-timeout -d 'How long to wait for the backend to accept a connection or answer a request' -r
complete -c dlock -n "__fish_dlock_needs_command" -l log-format -d 'Format of messages on stderr: text, or one JSON event per line for log shippers' -r -f -a "text\t''
json\t''"
complete -c dlock -n "__fish_dlock_needs_command" -s q -l quiet -d 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
complete -c dlock -n "__fish_dlock_needs_command" -s v -l verbose -d 'Report each step (acquired, renewed, released) on stderr'
complete -c dlock -n "__fish_dlock_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_needs_command" -s V -l version -d 'Print version'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "acquire" -d 'Take a lock and print its token; the lease runs out unless renewed (`renew`, --keepalive-pid) or released'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "release" -d 'Release a lock held by a token'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "status" -d 'Show who holds which lock (exit 1 when a named lock is free)'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "exec" -d 'Run a command while holding a lock, renewing the lease until it exits'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "renew" -d 'Extend a lease held by a token (exit 3 or 4 when the token no longer holds it)'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "watch" -d 'Print each change of the named locks as it happens (exit 0 once --until holds)'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "urls" -d 'List the backend URL schemes, each as it is written'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l also -d 'Take this lock too, all or none (repeat for more): the names are taken in one order, so requests that list them differently never deadlock' -x -a '(__fish_dlock_held_locks)'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l token -d 'Use this token instead of a random one; acquiring again with it extends the lease. Never taken from DLOCK_TOKEN, so an acquire inside `dlock exec` waits like any other' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l keepalive-pid -d 'Keep renewing the lease in a detached dlock while process PID lives (e.g. `$$`), and release it when PID exits' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l lease -d 'How long the lease lasts on the server without renewal' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l wait -d 'How long to wait for a busy lock: 0 fails at once, `forever` waits without limit' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l slots -d 'Let up to N holders in at once (a counting semaphore); each has its own token, lease and fence, and `exec` sets DLOCK_SLOT to its slot number (0..N-1)' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l url -d 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l url-file -d 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l prefix -d 'Namespace for every key, table row and channel dlock uses' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l connect-timeout -d 'How long to wait for the backend to accept a connection or answer a request' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l log-format -d 'Format of messages on stderr: text, or one JSON event per line for log shippers' -r -f -a "text\t''
json\t''"
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l json -d 'Print an object with name, token, fence and expiry instead of the bare token'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l shared -d 'Take a shared (read) lock: shared holders run together, an exclusive holder excludes them all, and new shared requests wait behind a waiting exclusive one'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l fair -d 'Wait in arrival order: no later request takes the lock ahead of this one'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s q -l quiet -d 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s v -l verbose -d 'Report each step (acquired, renewed, released) on stderr'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s h -l help -d 'Print help'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s V -l version -d 'Print version'
complete -c dlock -n "__fish_dlock_using_subcommand release" -l also -d 'Release (or with --force, break) this lock too, e.g. one taken by `acquire --also` (repeat for more)' -x -a '(__fish_dlock_held_locks)'
complete -c dlock -n "__fish_dlock_using_subcommand release" -l token -d 'The token printed by `acquire`. DLOCK_TOKEN set by an enclosing `dlock exec` of the same lock is refused: that exec releases the lock when its command ends' -r
complete -c dlock -n "__fish_dlock_using_subcommand release" -l token-id -d 'With --force, break only the holder with this token id (the TOKEN column of `status`, or the whole token)' -r
complete -c dlock -n "__fish_dlock_using_subcommand release" -l url -d 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]' -r
complete -c dlock -n "__fish_dlock_using_subcommand release" -l url-file -d 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand release" -l prefix -d 'Namespace for every key, table row and channel dlock uses' -r
complete -c dlock -n "__fish_dlock_using_subcommand release" -l connect-timeout -d 'How long to wait for the backend to accept a connection or answer a request' -r
complete -c dlock -n "__fish_dlock_using_subcommand release" -l log-format -d 'Format of messages on stderr: text, or one JSON event per line for log shippers' -r -f -a "text\t''
json\t''"
complete -c dlock -n "__fish_dlock_using_subcommand release" -l force -d 'Break the lock whoever holds it (every holder of a shared lock or semaphore), and say whom it broke'
complete -c dlock -n "__fish_dlock_using_subcommand release" -s q -l quiet -d 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
complete -c dlock -n "__fish_dlock_using_subcommand release" -s v -l verbose -d 'Report each step (acquired, renewed, released) on stderr'
complete -c dlock -n "__fish_dlock_using_subcommand release" -s h -l help -d 'Print help'
complete -c dlock -n "__fish_dlock_using_subcommand release" -s V -l version -d 'Print version'
complete -c dlock -n "__fish_dlock_using_subcommand status" -l url -d 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]' -r
complete -c dlock -n "__fish_dlock_using_subcommand status" -l url-file -d 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand status" -l prefix -d 'Namespace for every key, table row and channel dlock uses' -r
complete -c dlock -n "__fish_dlock_using_subcommand status" -l connect-timeout -d 'How long to wait for the backend to accept a connection or answer a request' -r
complete -c dlock -n "__fish_dlock_using_subcommand status" -l log-format -d 'Format of messages on stderr: text, or one JSON event per line for log shippers' -r -f -a "text\t''
json\t''"
complete -c dlock -n "__fish_dlock_using_subcommand status" -l json -d 'Print a JSON object (schema in README) instead of a table'
complete -c dlock -n "__fish_dlock_using_subcommand status" -l names-only -d 'Print only the names of the held locks, one per line (for scripts and shell completion)'
complete -c dlock -n "__fish_dlock_using_subcommand status" -s q -l quiet -d 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
complete -c dlock -n "__fish_dlock_using_subcommand status" -s v -l verbose -d 'Report each step (acquired, renewed, released) on stderr'
complete -c dlock -n "__fish_dlock_using_subcommand status" -s h -l help -d 'Print help'
complete -c dlock -n "__fish_dlock_using_subcommand status" -s V -l version -d 'Print version'
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l also -d 'Hold this lock too, all or none (repeat for more): the names are taken in one order, so jobs that list them differently never deadlock; each gets its own fence' -x -a '(__fish_dlock_held_locks)'
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l lease -d 'How long the lease lasts on the server without renewal' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l wait -d 'How long to wait for a busy lock: 0 fails at once, `forever` waits without limit' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l slots -d 'Let up to N holders in at once (a counting semaphore); each has its own token, lease and fence, and `exec` sets DLOCK_SLOT to its slot number (0..N-1)' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -s E -l conflict-exit-code -d 'Exit code when the lock is busy after --wait (like flock -E)' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l on-lost-signal -d 'Signal sent to the command\'s process group when the lease is lost' -r -f -a "TERM\t''
INT\t''
HUP\t''
QUIT\t''
KILL\t''
USR1\t''
USR2\t''
ALRM\t''
ABRT\t''
PWR\t''"
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l kill-after -d 'Grace period between that signal and SIGKILL [default: a fifth of the lease, at most 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l min-hold -d 'Keep the lease at least this long after acquiring it, even if the command ends sooner, so one cron tick runs once across hosts whose clocks differ' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l max-runtime -d 'Stop the whole job (signal, then SIGKILL after --kill-after) when it runs longer; exit 124' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l jitter -d 'Sleep a random time up to DUR before trying, to spread hosts started by the same cron tick' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -s c -l shell -d 'Run this string with /bin/sh -c instead of CMD' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l url -d 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l url-file -d 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l prefix -d 'Namespace for every key, table row and channel dlock uses' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l connect-timeout -d 'How long to wait for the backend to accept a connection or answer a request' -r
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l log-format -d 'Format of messages on stderr: text, or one JSON event per line for log shippers' -r -f -a "text\t''
json\t''"
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l shared -d 'Take a shared (read) lock: shared holders run together, an exclusive holder excludes them all, and new shared requests wait behind a waiting exclusive one'
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -l fair -d 'Wait in arrival order: no later request takes the lock ahead of this one'
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -s q -l quiet -d 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -s v -l verbose -d 'Report each step (acquired, renewed, released) on stderr'
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -s h -l help -d 'Print help'
complete -c dlock -n "__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command" -s V -l version -d 'Print version'
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l also -d 'Renew this lock too, taken with the same token by `acquire --also` (repeat for more)' -x -a '(__fish_dlock_held_locks)'
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l token -d 'The token printed by `acquire`' -r
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l lease -d 'The new lease, counted from now' -r
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l url -d 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]' -r
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l url-file -d 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l prefix -d 'Namespace for every key, table row and channel dlock uses' -r
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l connect-timeout -d 'How long to wait for the backend to accept a connection or answer a request' -r
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l log-format -d 'Format of messages on stderr: text, or one JSON event per line for log shippers' -r -f -a "text\t''
json\t''"
complete -c dlock -n "__fish_dlock_using_subcommand renew" -s q -l quiet -d 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
complete -c dlock -n "__fish_dlock_using_subcommand renew" -s v -l verbose -d 'Report each step (acquired, renewed, released) on stderr'
complete -c dlock -n "__fish_dlock_using_subcommand renew" -s h -l help -d 'Print help'
complete -c dlock -n "__fish_dlock_using_subcommand renew" -s V -l version -d 'Print version'
complete -c dlock -n "__fish_dlock_using_subcommand watch" -l until -d 'Exit 0 as soon as every named lock is free (or held); without names, as soon as no lock (or some lock) under the prefix is held. Checked at once too' -r -f -a "free\t'Nobody holds it'
held\t'Somebody holds it'"
complete -c dlock -n "__fish_dlock_using_subcommand watch" -l wait -d 'With --until, how long to wait for it: exit 75 when this runs out first' -r
complete -c dlock -n "__fish_dlock_using_subcommand watch" -l url -d 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]' -r
complete -c dlock -n "__fish_dlock_using_subcommand watch" -l url-file -d 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand watch" -l prefix -d 'Namespace for every key, table row and channel dlock uses' -r
complete -c dlock -n "__fish_dlock_using_subcommand watch" -l connect-timeout -d 'How long to wait for the backend to accept a connection or answer a request' -r
complete -c dlock -n "__fish_dlock_using_subcommand watch" -l log-format -d 'Format of messages on stderr: text, or one JSON event per line for log shippers' -r -f -a "text\t''
json\t''"
complete -c dlock -n "__fish_dlock_using_subcommand watch" -l json -d 'Print one JSON object per event (schema in README) instead of a line of text'
complete -c dlock -n "__fish_dlock_using_subcommand watch" -s q -l quiet -d 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
complete -c dlock -n "__fish_dlock_using_subcommand watch" -s v -l verbose -d 'Report each step (acquired, renewed, released) on stderr'
complete -c dlock -n "__fish_dlock_using_subcommand watch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand watch" -s V -l version -d 'Print version'
complete -c dlock -n "__fish_dlock_using_subcommand urls" -l url -d 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]' -r
complete -c dlock -n "__fish_dlock_using_subcommand urls" -l url-file -d 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand urls" -l prefix -d 'Namespace for every key, table row and channel dlock uses' -r
complete -c dlock -n "__fish_dlock_using_subcommand urls" -l connect-timeout -d 'How long to wait for the backend to accept a connection or answer a request' -r
complete -c dlock -n "__fish_dlock_using_subcommand urls" -l log-format -d 'Format of messages on stderr: text, or one JSON event per line for log shippers' -r -f -a "text\t''
json\t''"
complete -c dlock -n "__fish_dlock_using_subcommand urls" -s q -l quiet -d 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
complete -c dlock -n "__fish_dlock_using_subcommand urls" -s v -l verbose -d 'Report each step (acquired, renewed, released) on stderr'
complete -c dlock -n "__fish_dlock_using_subcommand urls" -s h -l help -d 'Print help'
complete -c dlock -n "__fish_dlock_using_subcommand urls" -s V -l version -d 'Print version'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from acquire release status exec renew watch urls help" -f -a "acquire" -d 'Take a lock and print its token; the lease runs out unless renewed (`renew`, --keepalive-pid) or released'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from acquire release status exec renew watch urls help" -f -a "release" -d 'Release a lock held by a token'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from acquire release status exec renew watch urls help" -f -a "status" -d 'Show who holds which lock (exit 1 when a named lock is free)'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from acquire release status exec renew watch urls help" -f -a "exec" -d 'Run a command while holding a lock, renewing the lease until it exits'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from acquire release status exec renew watch urls help" -f -a "renew" -d 'Extend a lease held by a token (exit 3 or 4 when the token no longer holds it)'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from acquire release status exec renew watch urls help" -f -a "watch" -d 'Print each change of the named locks as it happens (exit 0 once --until holds)'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from acquire release status exec renew watch urls help" -f -a "urls" -d 'List the backend URL schemes, each as it is written'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from acquire release status exec renew watch urls help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'

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
                case --also --conflict-exit-code --connect-timeout --jitter --keepalive-pid \
                    --kill-after --lease --log-format --max-runtime --min-hold \
                    --on-lost-signal --prefix --shell --slots --token --token-id --until \
                    --url --url-file --wait -E -c
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
