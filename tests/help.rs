//! `--help` as an operator reads it: options grouped by what they are for,
//! and no half-printed environment values.

use crate::common;

use std::process::Command;

fn help(args: &[&str]) -> String {
    let o = Command::new(common::dlock_bin())
        .args(args)
        .env_remove("DLOCK_URL_FILE")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    String::from_utf8(o.stdout).unwrap()
}

/// The heading each option is listed under.
fn heading_of(help: &str, option: &str) -> String {
    let mut heading = String::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            heading = line.trim_end_matches(':').to_string();
        } else if line.starts_with("  ") && line.trim_start().split([' ', ',']).any(|w| w == option)
        {
            return heading;
        }
    }
    panic!("{option} not in help:\n{help}");
}

#[test]
fn exec_help_groups_global_waiting_and_command_options() {
    let h = help(&["exec", "--help"]);
    for (opt, want) in [
        ("--url", "Backend and output (any subcommand)"),
        ("--prefix", "Backend and output (any subcommand)"),
        ("--quiet", "Backend and output (any subcommand)"),
        ("--lease", "Lease and waiting"),
        ("--wait", "Lease and waiting"),
        ("--conflict-exit-code", "Lease and waiting"),
        ("--jitter", "Lease and waiting"),
        ("--min-hold", "Lease and waiting"),
        ("--on-lost-signal", "Running the command"),
        ("--kill-after", "Running the command"),
        ("--max-runtime", "Running the command"),
        ("--shell", "Running the command"),
    ] {
        assert_eq!(heading_of(&h, opt), want, "{opt}");
    }
    assert_eq!(heading_of(&h, "[CMD]..."), "Arguments");
}

#[test]
fn unset_environment_variables_print_without_a_stray_equals_sign() {
    for args in [&["--help"][..], &["exec", "--help"], &["acquire", "--help"]] {
        let h = help(args);
        assert!(!h.contains("=]"), "{args:?}:\n{h}");
        assert!(h.contains("DLOCK_URL_FILE]"), "{h}");
    }
}
