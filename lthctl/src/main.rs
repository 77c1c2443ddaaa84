//! `lthctl`: submit, watch and analyse lth sweeps. See `lthctl --help`.

use clap::Parser;
use std::io::Write;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = lthctl::cli::Cli::parse();
    let mut out = lthctl::output::Stdout::new(std::io::stdout().lock());
    let result = lthctl::commands::run(cli, &mut out).await;
    let flushed = out.flush();
    if out.reader_left() {
        // `lthctl ... | head`: the reader had what it wanted; nothing went wrong.
        return std::process::ExitCode::SUCCESS;
    }
    match result.and(flushed.map_err(anyhow::Error::from)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
