//! `lthctl`: submit, watch and analyse lth sweeps. See `lthctl --help`.

use clap::Parser;
use std::io::Write;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = lthctl::cli::Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match lthctl::commands::run(cli, &mut out).await {
        Ok(()) => {
            let _ = out.flush();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = out.flush();
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
