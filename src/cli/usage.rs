//! Usage errors that dlock words itself instead of clap.

/// dlock's own line for a usage error about the subcommand, where clap's
/// would name the hidden `keepalive` (in its list of subcommands, or as the
/// tip for a typo); None to keep clap's.
pub fn subcommand_error(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    let cmd = super::Cli::command();
    let visible = |s: &&clap::Command| !s.is_hide_set();
    let names: Vec<&str> = cmd
        .get_subcommands()
        .filter(visible)
        .map(|s| s.get_name())
        .collect();
    let list = names.join(", ");
    match e.kind() {
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Some(
            format!("error: a subcommand is required: {list} (see --help)"),
        ),
        ErrorKind::InvalidSubcommand => {
            let Some(ContextValue::Strings(tips)) = e.get(ContextKind::SuggestedSubcommand) else {
                return None;
            };
            if tips.iter().all(|t| names.contains(&t.as_str())) {
                return None;
            }
            let given = match e.get(ContextKind::InvalidSubcommand) {
                Some(ContextValue::String(s)) => s.as_str(),
                _ => "",
            };
            Some(format!(
                "error: unrecognized subcommand '{given}'; the subcommands are {list} (see --help)"
            ))
        }
        _ => None,
    }
}
