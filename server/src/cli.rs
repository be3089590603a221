//! The `keepsake-server` command line.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::app;
use crate::config::{AdminCommand, Cli, Command, Config};

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
        Command::Admin(cmd) => admin(cmd, config).await,
        Command::Migrate => {
            let db = app::prepare_database(&config, false).await?;
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

async fn admin(cmd: AdminCommand, config: Config) -> anyhow::Result<()> {
    let prepared = app::prepare_database(&config, false).await?;
    app::run_migrations(&prepared.owner_config).await?;
    let result = admin_inner(cmd, &config, &prepared.owner_config).await;
    if let Some(mut cluster) = prepared.cluster {
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
    }
    result
}

async fn admin_inner(
    cmd: AdminCommand,
    config: &Config,
    owner_config: &tokio_postgres::Config,
) -> anyhow::Result<()> {
    let owner = crate::db::connect_owner(owner_config).await?;
    let db = crate::db::Db::new(owner_config.clone(), 2)?;
    match cmd {
        AdminCommand::CreateOrg {
            name,
            slug,
            admin_email,
            json,
        } => {
            let kind = match &config.storage {
                crate::destinations::DestinationConfig::S3 { .. } => "s3",
                _ => "local",
            };
            let created =
                crate::orgs::create_org(&owner, &db, &name, slug.as_deref(), &admin_email, kind)
                    .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!(
                    "organization: {} ({})",
                    created.slug, created.organization_id
                );
                println!("admin token:  {}", created.admin_token);
                println!(
                    "enroll token: {}  (single use, expires {})",
                    created.enroll_token, created.enroll_token_expires_at
                );
            }
        }
        AdminCommand::EnrollToken { org, hours, json } => {
            let org_id = crate::orgs::find_org(&owner, &org).await?;
            let mut client = db.client().await?;
            let tx =
                crate::db::begin(&mut client, &crate::db::Actor::System { org: org_id }).await?;
            let (token, id, expires) =
                crate::orgs::insert_enroll_token(&tx, org_id, None, hours, Some("admin cli"))
                    .await?;
            tx.commit().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&keepsake_common::api::TokenCreated {
                        token_id: id,
                        token,
                        expires_at: Some(expires),
                    })?
                );
            } else {
                println!("enroll token: {token}  (single use, expires {expires})");
            }
        }
    }
    Ok(())
}
