
use builtin;
use str;

set edit:completion:arg-completer[dlock] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'dlock'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'dlock'= {
            cand --url 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]'
            cand --url-file 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)'
            cand --prefix 'Namespace for every key, table row and channel dlock uses'
            cand --connect-timeout 'How long to wait for the backend to accept a connection or answer a request'
            cand --log-format 'Format of messages on stderr: text, or one JSON event per line for log shippers'
            cand -q 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand --quiet 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand -v 'Report each step (acquired, renewed, released) on stderr'
            cand --verbose 'Report each step (acquired, renewed, released) on stderr'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand acquire 'Take a lock and print its token; the lease runs out unless renewed (`renew`, --keepalive-pid) or released'
            cand release 'Release a lock held by a token'
            cand status 'Show who holds which lock (exit 1 when a named lock is free)'
            cand exec 'Run a command while holding a lock, renewing the lease until it exits'
            cand renew 'Extend a lease held by a token (exit 3 or 4 when the token no longer holds it)'
            cand watch 'Print each change of the named locks as it happens (exit 0 once --until holds)'
            cand urls 'List the backend URL schemes, each as it is written'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'dlock;acquire'= {
            cand --also 'Take this lock too, all or none (repeat for more): the names are taken in one order, so requests that list them differently never deadlock'
            cand --token 'Use this token instead of a random one; acquiring again with it extends the lease. Never taken from DLOCK_TOKEN, so an acquire inside `dlock exec` waits like any other'
            cand --keepalive-pid 'Keep renewing the lease in a detached dlock while process PID lives (e.g. `$$`), and release it when PID exits'
            cand --lease 'How long the lease lasts on the server without renewal'
            cand --wait 'How long to wait for a busy lock: 0 fails at once, `forever` waits without limit'
            cand --slots 'Let up to N holders in at once (a counting semaphore); each has its own token, lease and fence, and `exec` sets DLOCK_SLOT to its slot number (0..N-1)'
            cand --url 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]'
            cand --url-file 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)'
            cand --prefix 'Namespace for every key, table row and channel dlock uses'
            cand --connect-timeout 'How long to wait for the backend to accept a connection or answer a request'
            cand --log-format 'Format of messages on stderr: text, or one JSON event per line for log shippers'
            cand --json 'Print an object with name, token, fence and expiry instead of the bare token'
            cand --shared 'Take a shared (read) lock: shared holders run together, an exclusive holder excludes them all, and new shared requests wait behind a waiting exclusive one'
            cand --fair 'Wait in arrival order: no later request takes the lock ahead of this one'
            cand -q 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand --quiet 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand -v 'Report each step (acquired, renewed, released) on stderr'
            cand --verbose 'Report each step (acquired, renewed, released) on stderr'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dlock;release'= {
            cand --also 'Release (or with --force, break) this lock too, e.g. one taken by `acquire --also` (repeat for more)'
            cand --token 'The token printed by `acquire`. DLOCK_TOKEN set by an enclosing `dlock exec` of the same lock is refused: that exec releases the lock when its command ends'
            cand --token-id 'With --force, break only the holder with this token id (the TOKEN column of `status`, or the whole token)'
            cand --url 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]'
            cand --url-file 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)'
            cand --prefix 'Namespace for every key, table row and channel dlock uses'
            cand --connect-timeout 'How long to wait for the backend to accept a connection or answer a request'
            cand --log-format 'Format of messages on stderr: text, or one JSON event per line for log shippers'
            cand --force 'Break the lock whoever holds it (every holder of a shared lock or semaphore), and say whom it broke'
            cand -q 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand --quiet 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand -v 'Report each step (acquired, renewed, released) on stderr'
            cand --verbose 'Report each step (acquired, renewed, released) on stderr'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dlock;status'= {
            cand --url 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]'
            cand --url-file 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)'
            cand --prefix 'Namespace for every key, table row and channel dlock uses'
            cand --connect-timeout 'How long to wait for the backend to accept a connection or answer a request'
            cand --log-format 'Format of messages on stderr: text, or one JSON event per line for log shippers'
            cand --json 'Print a JSON object (schema in README) instead of a table'
            cand --names-only 'Print only the names of the held locks, one per line (for scripts and shell completion)'
            cand -q 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand --quiet 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand -v 'Report each step (acquired, renewed, released) on stderr'
            cand --verbose 'Report each step (acquired, renewed, released) on stderr'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dlock;exec'= {
            cand --also 'Hold this lock too, all or none (repeat for more): the names are taken in one order, so jobs that list them differently never deadlock; each gets its own fence'
            cand --lease 'How long the lease lasts on the server without renewal'
            cand --wait 'How long to wait for a busy lock: 0 fails at once, `forever` waits without limit'
            cand --slots 'Let up to N holders in at once (a counting semaphore); each has its own token, lease and fence, and `exec` sets DLOCK_SLOT to its slot number (0..N-1)'
            cand -E 'Exit code when the lock is busy after --wait (like flock -E)'
            cand --conflict-exit-code 'Exit code when the lock is busy after --wait (like flock -E)'
            cand --on-lost-signal 'Signal sent to the command''s process group when the lease is lost'
            cand --kill-after 'Grace period between that signal and SIGKILL [default: a fifth of the lease, at most 5s]'
            cand --min-hold 'Keep the lease at least this long after acquiring it, even if the command ends sooner, so one cron tick runs once across hosts whose clocks differ'
            cand --max-runtime 'Stop the whole job (signal, then SIGKILL after --kill-after) when it runs longer; exit 124'
            cand --jitter 'Sleep a random time up to DUR before trying, to spread hosts started by the same cron tick'
            cand -c 'Run this string with /bin/sh -c instead of CMD'
            cand --shell 'Run this string with /bin/sh -c instead of CMD'
            cand --url 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]'
            cand --url-file 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)'
            cand --prefix 'Namespace for every key, table row and channel dlock uses'
            cand --connect-timeout 'How long to wait for the backend to accept a connection or answer a request'
            cand --log-format 'Format of messages on stderr: text, or one JSON event per line for log shippers'
            cand --shared 'Take a shared (read) lock: shared holders run together, an exclusive holder excludes them all, and new shared requests wait behind a waiting exclusive one'
            cand --fair 'Wait in arrival order: no later request takes the lock ahead of this one'
            cand -q 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand --quiet 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand -v 'Report each step (acquired, renewed, released) on stderr'
            cand --verbose 'Report each step (acquired, renewed, released) on stderr'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dlock;renew'= {
            cand --also 'Renew this lock too, taken with the same token by `acquire --also` (repeat for more)'
            cand --token 'The token printed by `acquire`'
            cand --lease 'The new lease, counted from now'
            cand --url 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]'
            cand --url-file 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)'
            cand --prefix 'Namespace for every key, table row and channel dlock uses'
            cand --connect-timeout 'How long to wait for the backend to accept a connection or answer a request'
            cand --log-format 'Format of messages on stderr: text, or one JSON event per line for log shippers'
            cand -q 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand --quiet 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand -v 'Report each step (acquired, renewed, released) on stderr'
            cand --verbose 'Report each step (acquired, renewed, released) on stderr'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dlock;watch'= {
            cand --until 'Exit 0 as soon as every named lock is free (or held); without names, as soon as no lock (or some lock) under the prefix is held. Checked at once too'
            cand --wait 'With --until, how long to wait for it: exit 75 when this runs out first'
            cand --url 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]'
            cand --url-file 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)'
            cand --prefix 'Namespace for every key, table row and channel dlock uses'
            cand --connect-timeout 'How long to wait for the backend to accept a connection or answer a request'
            cand --log-format 'Format of messages on stderr: text, or one JSON event per line for log shippers'
            cand --json 'Print one JSON object per event (schema in README) instead of a line of text'
            cand -q 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand --quiet 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand -v 'Report each step (acquired, renewed, released) on stderr'
            cand --verbose 'Report each step (acquired, renewed, released) on stderr'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dlock;urls'= {
            cand --url 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]'
            cand --url-file 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)'
            cand --prefix 'Namespace for every key, table row and channel dlock uses'
            cand --connect-timeout 'How long to wait for the backend to accept a connection or answer a request'
            cand --log-format 'Format of messages on stderr: text, or one JSON event per line for log shippers'
            cand -q 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand --quiet 'Print no messages but errors on stderr; results on stdout (a token, the status) still print'
            cand -v 'Report each step (acquired, renewed, released) on stderr'
            cand --verbose 'Report each step (acquired, renewed, released) on stderr'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dlock;help'= {
            cand acquire 'Take a lock and print its token; the lease runs out unless renewed (`renew`, --keepalive-pid) or released'
            cand release 'Release a lock held by a token'
            cand status 'Show who holds which lock (exit 1 when a named lock is free)'
            cand exec 'Run a command while holding a lock, renewing the lease until it exits'
            cand renew 'Extend a lease held by a token (exit 3 or 4 when the token no longer holds it)'
            cand watch 'Print each change of the named locks as it happens (exit 0 once --until holds)'
            cand urls 'List the backend URL schemes, each as it is written'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'dlock;help;acquire'= {
        }
        &'dlock;help;release'= {
        }
        &'dlock;help;status'= {
        }
        &'dlock;help;exec'= {
        }
        &'dlock;help;renew'= {
        }
        &'dlock;help;watch'= {
        }
        &'dlock;help;urls'= {
        }
        &'dlock;help;help'= {
        }
    ]
    $completions[$command]
}
