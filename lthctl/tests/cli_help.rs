//! Every subcommand and every argument of `lthctl` explains itself in `--help`: an argument
//! without help text is a question a user has to ask someone.

use clap::CommandFactory;

/// (path, argument) of every argument without help text, and every subcommand without one.
fn missing_help(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        // clap's own --help and --version explain themselves.
        if matches!(arg.get_id().as_str(), "help" | "version") {
            continue;
        }
        let help = arg.get_help().or(arg.get_long_help()).map(|h| h.to_string()).unwrap_or_default();
        if help.trim().is_empty() {
            out.push(format!("{path} <{}>", arg.get_id()));
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_path = format!("{path} {}", sub.get_name());
        if sub.get_about().or(sub.get_long_about()).is_none_or(|a| a.to_string().trim().is_empty()) {
            out.push(format!("{sub_path} (the subcommand itself)"));
        }
        missing_help(sub, &sub_path, out);
    }
}

#[test]
fn every_argument_and_subcommand_has_help_text() {
    let cmd = lthctl::cli::Cli::command();
    cmd.clone().debug_assert();
    let mut missing = Vec::new();
    missing_help(&cmd, "lthctl", &mut missing);
    assert!(missing.is_empty(), "arguments without help text (add a /// doc comment):\n  {}", missing.join("\n  "));
    // The walk sees the tree: subcommands and their positional arguments.
    let names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
    for want in ["submit", "ls", "status", "watch", "results", "export", "report"] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    let export = cmd.find_subcommand("export").unwrap();
    assert!(export.get_arguments().any(|a| a.get_id() == "id" && a.is_positional()));
}

#[test]
fn the_walk_catches_an_argument_without_help() {
    let cmd = clap::Command::new("t").subcommand(clap::Command::new("sub").about("a sub").arg(clap::Arg::new("bare").long("bare")));
    let mut missing = Vec::new();
    missing_help(&cmd, "t", &mut missing);
    assert_eq!(missing, vec!["t sub <bare>".to_string()]);
}
