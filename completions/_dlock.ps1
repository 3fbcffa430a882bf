
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'dlock' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'dlock'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'dlock' {
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]')
            [CompletionResult]::new('--url-file', '--url-file', [CompletionResultType]::ParameterName, 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)')
            [CompletionResult]::new('--prefix', '--prefix', [CompletionResultType]::ParameterName, 'Namespace for every key, table row and channel dlock uses')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'How long to wait for the backend to accept a connection or answer a request')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Format of messages on stderr: text, or one JSON event per line for log shippers')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('acquire', 'acquire', [CompletionResultType]::ParameterValue, 'Take a lock and print its token; the lease runs out unless renewed (`renew`, --keepalive-pid) or released')
            [CompletionResult]::new('release', 'release', [CompletionResultType]::ParameterValue, 'Release a lock held by a token')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show who holds which lock (exit 1 when a named lock is free)')
            [CompletionResult]::new('exec', 'exec', [CompletionResultType]::ParameterValue, 'Run a command while holding a lock, renewing the lease until it exits')
            [CompletionResult]::new('renew', 'renew', [CompletionResultType]::ParameterValue, 'Extend a lease held by a token (exit 3 or 4 when the token no longer holds it)')
            [CompletionResult]::new('watch', 'watch', [CompletionResultType]::ParameterValue, 'Print each change of the named locks as it happens (exit 0 once --until holds)')
            [CompletionResult]::new('urls', 'urls', [CompletionResultType]::ParameterValue, 'List the backend URL schemes, each as it is written')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'dlock;acquire' {
            [CompletionResult]::new('--also', '--also', [CompletionResultType]::ParameterName, 'Take this lock too, all or none (repeat for more): the names are taken in one order, so requests that list them differently never deadlock')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'Use this token instead of a random one; acquiring again with it extends the lease. Never taken from DLOCK_TOKEN, so an acquire inside `dlock exec` waits like any other')
            [CompletionResult]::new('--keepalive-pid', '--keepalive-pid', [CompletionResultType]::ParameterName, 'Keep renewing the lease in a detached dlock while process PID lives (e.g. `$$`), and release it when PID exits')
            [CompletionResult]::new('--lease', '--lease', [CompletionResultType]::ParameterName, 'How long the lease lasts on the server without renewal')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'How long to wait for a busy lock: 0 fails at once, `forever` waits without limit')
            [CompletionResult]::new('--slots', '--slots', [CompletionResultType]::ParameterName, 'Let up to N holders in at once (a counting semaphore); each has its own token, lease and fence, and `exec` sets DLOCK_SLOT to its slot number (0..N-1)')
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]')
            [CompletionResult]::new('--url-file', '--url-file', [CompletionResultType]::ParameterName, 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)')
            [CompletionResult]::new('--prefix', '--prefix', [CompletionResultType]::ParameterName, 'Namespace for every key, table row and channel dlock uses')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'How long to wait for the backend to accept a connection or answer a request')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Format of messages on stderr: text, or one JSON event per line for log shippers')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print an object with name, token, fence and expiry instead of the bare token')
            [CompletionResult]::new('--shared', '--shared', [CompletionResultType]::ParameterName, 'Take a shared (read) lock: shared holders run together, an exclusive holder excludes them all, and new shared requests wait behind a waiting exclusive one')
            [CompletionResult]::new('--fair', '--fair', [CompletionResultType]::ParameterName, 'Wait in arrival order: no later request takes the lock ahead of this one')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'dlock;release' {
            [CompletionResult]::new('--also', '--also', [CompletionResultType]::ParameterName, 'Release (or with --force, break) this lock too, e.g. one taken by `acquire --also` (repeat for more)')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'The token printed by `acquire`. DLOCK_TOKEN set by an enclosing `dlock exec` of the same lock is refused: that exec releases the lock when its command ends')
            [CompletionResult]::new('--token-id', '--token-id', [CompletionResultType]::ParameterName, 'With --force, break only the holder with this token id (the TOKEN column of `status`, or the whole token)')
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]')
            [CompletionResult]::new('--url-file', '--url-file', [CompletionResultType]::ParameterName, 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)')
            [CompletionResult]::new('--prefix', '--prefix', [CompletionResultType]::ParameterName, 'Namespace for every key, table row and channel dlock uses')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'How long to wait for the backend to accept a connection or answer a request')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Format of messages on stderr: text, or one JSON event per line for log shippers')
            [CompletionResult]::new('--force', '--force', [CompletionResultType]::ParameterName, 'Break the lock whoever holds it (every holder of a shared lock or semaphore), and say whom it broke')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'dlock;status' {
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]')
            [CompletionResult]::new('--url-file', '--url-file', [CompletionResultType]::ParameterName, 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)')
            [CompletionResult]::new('--prefix', '--prefix', [CompletionResultType]::ParameterName, 'Namespace for every key, table row and channel dlock uses')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'How long to wait for the backend to accept a connection or answer a request')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Format of messages on stderr: text, or one JSON event per line for log shippers')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print a JSON object (schema in README) instead of a table')
            [CompletionResult]::new('--names-only', '--names-only', [CompletionResultType]::ParameterName, 'Print only the names of the held locks, one per line (for scripts and shell completion)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'dlock;exec' {
            [CompletionResult]::new('--also', '--also', [CompletionResultType]::ParameterName, 'Hold this lock too, all or none (repeat for more): the names are taken in one order, so jobs that list them differently never deadlock; each gets its own fence')
            [CompletionResult]::new('--lease', '--lease', [CompletionResultType]::ParameterName, 'How long the lease lasts on the server without renewal')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'How long to wait for a busy lock: 0 fails at once, `forever` waits without limit')
            [CompletionResult]::new('--slots', '--slots', [CompletionResultType]::ParameterName, 'Let up to N holders in at once (a counting semaphore); each has its own token, lease and fence, and `exec` sets DLOCK_SLOT to its slot number (0..N-1)')
            [CompletionResult]::new('-E', '-E ', [CompletionResultType]::ParameterName, 'Exit code when the lock is busy after --wait (like flock -E)')
            [CompletionResult]::new('--conflict-exit-code', '--conflict-exit-code', [CompletionResultType]::ParameterName, 'Exit code when the lock is busy after --wait (like flock -E)')
            [CompletionResult]::new('--on-lost-signal', '--on-lost-signal', [CompletionResultType]::ParameterName, 'Signal sent to the command''s process group when the lease is lost')
            [CompletionResult]::new('--kill-after', '--kill-after', [CompletionResultType]::ParameterName, 'Grace period between that signal and SIGKILL [default: a fifth of the lease, at most 5s]')
            [CompletionResult]::new('--min-hold', '--min-hold', [CompletionResultType]::ParameterName, 'Keep the lease at least this long after acquiring it, even if the command ends sooner, so one cron tick runs once across hosts whose clocks differ')
            [CompletionResult]::new('--max-runtime', '--max-runtime', [CompletionResultType]::ParameterName, 'Stop the whole job (signal, then SIGKILL after --kill-after) when it runs longer; exit 124')
            [CompletionResult]::new('--jitter', '--jitter', [CompletionResultType]::ParameterName, 'Sleep a random time up to DUR before trying, to spread hosts started by the same cron tick')
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'Run this string with /bin/sh -c instead of CMD')
            [CompletionResult]::new('--shell', '--shell', [CompletionResultType]::ParameterName, 'Run this string with /bin/sh -c instead of CMD')
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]')
            [CompletionResult]::new('--url-file', '--url-file', [CompletionResultType]::ParameterName, 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)')
            [CompletionResult]::new('--prefix', '--prefix', [CompletionResultType]::ParameterName, 'Namespace for every key, table row and channel dlock uses')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'How long to wait for the backend to accept a connection or answer a request')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Format of messages on stderr: text, or one JSON event per line for log shippers')
            [CompletionResult]::new('--shared', '--shared', [CompletionResultType]::ParameterName, 'Take a shared (read) lock: shared holders run together, an exclusive holder excludes them all, and new shared requests wait behind a waiting exclusive one')
            [CompletionResult]::new('--fair', '--fair', [CompletionResultType]::ParameterName, 'Wait in arrival order: no later request takes the lock ahead of this one')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'dlock;renew' {
            [CompletionResult]::new('--also', '--also', [CompletionResultType]::ParameterName, 'Renew this lock too, taken with the same token by `acquire --also` (repeat for more)')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'The token printed by `acquire`')
            [CompletionResult]::new('--lease', '--lease', [CompletionResultType]::ParameterName, 'The new lease, counted from now')
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]')
            [CompletionResult]::new('--url-file', '--url-file', [CompletionResultType]::ParameterName, 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)')
            [CompletionResult]::new('--prefix', '--prefix', [CompletionResultType]::ParameterName, 'Namespace for every key, table row and channel dlock uses')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'How long to wait for the backend to accept a connection or answer a request')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Format of messages on stderr: text, or one JSON event per line for log shippers')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'dlock;watch' {
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'Exit 0 as soon as every named lock is free (or held); without names, as soon as no lock (or some lock) under the prefix is held. Checked at once too')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'With --until, how long to wait for it: exit 75 when this runs out first')
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]')
            [CompletionResult]::new('--url-file', '--url-file', [CompletionResultType]::ParameterName, 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)')
            [CompletionResult]::new('--prefix', '--prefix', [CompletionResultType]::ParameterName, 'Namespace for every key, table row and channel dlock uses')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'How long to wait for the backend to accept a connection or answer a request')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Format of messages on stderr: text, or one JSON event per line for log shippers')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object per event (schema in README) instead of a line of text')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'dlock;urls' {
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists every scheme) [default: embedded SQLite file]')
            [CompletionResult]::new('--url-file', '--url-file', [CompletionResultType]::ParameterName, 'Read the backend URL from this file, keeping passwords out of argv and the environment (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)')
            [CompletionResult]::new('--prefix', '--prefix', [CompletionResultType]::ParameterName, 'Namespace for every key, table row and channel dlock uses')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'How long to wait for the backend to accept a connection or answer a request')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Format of messages on stderr: text, or one JSON event per line for log shippers')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print no messages but errors on stderr; results on stdout (a token, the status) still print')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Report each step (acquired, renewed, released) on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'dlock;help' {
            [CompletionResult]::new('acquire', 'acquire', [CompletionResultType]::ParameterValue, 'Take a lock and print its token; the lease runs out unless renewed (`renew`, --keepalive-pid) or released')
            [CompletionResult]::new('release', 'release', [CompletionResultType]::ParameterValue, 'Release a lock held by a token')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show who holds which lock (exit 1 when a named lock is free)')
            [CompletionResult]::new('exec', 'exec', [CompletionResultType]::ParameterValue, 'Run a command while holding a lock, renewing the lease until it exits')
            [CompletionResult]::new('renew', 'renew', [CompletionResultType]::ParameterValue, 'Extend a lease held by a token (exit 3 or 4 when the token no longer holds it)')
            [CompletionResult]::new('watch', 'watch', [CompletionResultType]::ParameterValue, 'Print each change of the named locks as it happens (exit 0 once --until holds)')
            [CompletionResult]::new('urls', 'urls', [CompletionResultType]::ParameterValue, 'List the backend URL schemes, each as it is written')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'dlock;help;acquire' {
            break
        }
        'dlock;help;release' {
            break
        }
        'dlock;help;status' {
            break
        }
        'dlock;help;exec' {
            break
        }
        'dlock;help;renew' {
            break
        }
        'dlock;help;watch' {
            break
        }
        'dlock;help;urls' {
            break
        }
        'dlock;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
