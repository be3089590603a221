//! The `keepsake-server` command line.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::app;
use crate::config::{Cli, Command, Config};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::resolve(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keepsake-server: {e}");
            return ExitCode::from(2);
        }
    };
    app::init_logging(&config.log_level, config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keepsake-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command.unwrap_or(Command::Serve), config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("keepsake-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            tracing::info!(
                data_dir = %config.data_dir.display(),
                database = ?config.database,
                "starting keepsake-server"
            );
            let server = app::start(config, app::shutdown_signal())
                .await
                .context("server failed to start")?;
            server
                .wait()
                .await
                .context("server stopped with an error")?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Migrate => {
            let db = app::prepare_database(&config).await?;
            let applied = app::run_migrations(&db.owner_config).await?;
            for name in &applied {
                println!("applied {name}");
            }
            if applied.is_empty() {
                println!("schema is current");
            }
            if let Some(mut cluster) = db.cluster {
                tokio::task::spawn_blocking(move || cluster.stop()).await??;
            }
            Ok(())
        }
    }
}
