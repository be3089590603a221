//! The `keepsake-server` command line.
//!
//! Crash behaviour: the command line keeps no state of its own; the changes of `migrate` and the
//! admin commands are made in the data layer's transactions, so a crash leaves each of those
//! transactions whole or absent and a command can be run again.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::app;
use crate::config::{
    AdminCommand, Cli, Command, Config, RecoveryCommand, RecoveryKind, ScenarioCommand,
};
use crate::db::{Actor, Db};
use crate::recovery;
use keepsake_common::api::{
    DisasterScenarioInfo, NewRecoveryJob, RecoveryJobDetail, RecoveryJobInfo, RecoveryType,
    StartScenarioRequest,
};

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
            let created = crate::db::orgs::create_org(
                &owner,
                &db,
                &name,
                slug.as_deref(),
                &admin_email,
                kind,
            )
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
            let org_id = crate::db::orgs::find_org(&owner, &org).await?;
            let mut client = db.client().await?;
            let tx =
                crate::db::begin(&mut client, &crate::db::Actor::System { org: org_id }).await?;
            let (token, id, expires) =
                crate::db::orgs::insert_enroll_token(&tx, org_id, None, hours, Some("admin cli"))
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
        AdminCommand::Recovery(cmd) => admin_recovery(cmd, &owner, &db).await?,
        AdminCommand::Scenario(cmd) => admin_scenario(cmd, &owner, &db).await?,
    }
    Ok(())
}

/// `admin recovery ...`: as the organisation's system actor, through the same queries as the API.
async fn admin_recovery(
    cmd: RecoveryCommand,
    owner: &tokio_postgres::Client,
    db: &Db,
) -> anyhow::Result<()> {
    let org_of = |cmd: &RecoveryCommand| match cmd {
        RecoveryCommand::Create { org, .. }
        | RecoveryCommand::List { org, .. }
        | RecoveryCommand::Show { org, .. } => org.clone(),
    };
    let org = crate::db::orgs::find_org(owner, &org_of(&cmd)).await?;
    let actor = Actor::System { org };
    let mut client = db.client().await?;
    let tx = crate::db::begin(&mut client, &actor).await?;
    match cmd {
        RecoveryCommand::Create {
            kind,
            target_agent,
            to,
            point,
            source,
            from_agent,
            paths,
            at,
            overwrite,
            notes,
            json,
            ..
        } => {
            let target_agent_id = recovery::find_agent(&tx, &target_agent).await?;
            let source_id = match (source, from_agent) {
                (Some(s), _) => Some(s),
                (None, Some(a)) => {
                    let a = recovery::find_agent(&tx, &a).await?;
                    Some(recovery::first_source(&tx, a).await?)
                }
                (None, None) => None,
            };
            let req = NewRecoveryJob {
                recovery_type: match kind {
                    RecoveryKind::Full => RecoveryType::FullRecovery,
                    RecoveryKind::Partial => RecoveryType::PartialRecovery,
                    RecoveryKind::File => RecoveryType::FileRecovery,
                    RecoveryKind::PointInTime => RecoveryType::PointInTimeRecovery,
                    RecoveryKind::Emergency => RecoveryType::EmergencyRecovery,
                },
                recovery_point_id: point,
                source_id,
                point_in_time: at,
                path_prefixes: paths,
                target_agent_id,
                target_directory: to,
                overwrite,
                notes,
            };
            let job = recovery::create_job(&tx, &actor, &req).await?;
            tx.commit().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print_job(&job);
            }
        }
        RecoveryCommand::List { json, .. } => {
            let jobs = recovery::list_jobs(&tx, None, 10_000).await?;
            tx.commit().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else if jobs.is_empty() {
                println!("no recovery jobs");
            } else {
                for j in &jobs {
                    println!(
                        "{}  {:<10} {:<22} {:>3}%  {}{}  {}",
                        j.id,
                        j.status,
                        recovery::type_to_db(j.recovery_type),
                        j.progress_percentage,
                        j.target_directory.as_deref().unwrap_or("-"),
                        if j.is_emergency { "  EMERGENCY" } else { "" },
                        j.created_at.to_rfc3339()
                    );
                }
            }
        }
        RecoveryCommand::Show { id, json, .. } => {
            let detail = recovery::job_detail(&tx, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no recovery job {id} in this organisation"))?;
            tx.commit().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print_detail(&detail);
            }
        }
    }
    Ok(())
}

/// `admin scenario ...`.
async fn admin_scenario(
    cmd: ScenarioCommand,
    owner: &tokio_postgres::Client,
    db: &Db,
) -> anyhow::Result<()> {
    let org = match &cmd {
        ScenarioCommand::List { org, .. } | ScenarioCommand::Start { org, .. } => {
            crate::db::orgs::find_org(owner, org).await?
        }
    };
    let actor = Actor::System { org };
    let mut client = db.client().await?;
    let tx = crate::db::begin(&mut client, &actor).await?;
    match cmd {
        ScenarioCommand::List { json, .. } => {
            let list = recovery::list_scenarios(&tx).await?;
            tx.commit().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for sc in &list {
                    print_scenario(sc);
                }
            }
        }
        ScenarioCommand::Start {
            scenario,
            target_agent,
            to,
            lost_agent,
            at,
            json,
            ..
        } => {
            let id = recovery::find_scenario(&tx, &scenario).await?;
            let target_agent_id = recovery::find_agent(&tx, &target_agent).await?;
            let lost_agent_id = match lost_agent {
                Some(a) => Some(recovery::find_agent(&tx, &a).await?),
                None => None,
            };
            let req = StartScenarioRequest {
                target_agent_id,
                target_directory: to,
                lost_agent_id,
                point_in_time: at,
            };
            let ids = recovery::start_scenario(&tx, &actor, id, &req).await?;
            tx.commit().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&keepsake_common::api::StartScenarioResponse {
                        recovery_job_ids: ids,
                    })?
                );
            } else if ids.is_empty() {
                println!("scenario started; it prescribes no recovery jobs (follow its steps)");
            } else {
                println!("scenario started; recovery jobs queued:");
                for id in &ids {
                    println!("  {id}");
                }
            }
        }
    }
    Ok(())
}

fn print_job(j: &RecoveryJobInfo) {
    println!(
        "recovery job {}  {}  {}{}",
        j.id,
        recovery::type_to_db(j.recovery_type),
        j.status,
        if j.is_emergency { "  EMERGENCY" } else { "" }
    );
    if let Some(p) = j.recovery_point_id {
        println!(
            "  point:     {p} (source {}, at {})",
            j.source_id.map(|s| s.to_string()).unwrap_or_default(),
            j.point_in_time.map(|t| t.to_rfc3339()).unwrap_or_default()
        );
    }
    println!(
        "  target:    {} {}{}",
        j.target_agent_id.map(|a| a.to_string()).unwrap_or_default(),
        j.target_directory.as_deref().unwrap_or(""),
        if j.overwrite { "  (overwrite)" } else { "" }
    );
    if !j.path_prefixes.is_empty() {
        println!("  paths:     {}", j.path_prefixes.join(", "));
    }
    println!(
        "  progress:  {}%  ({} files, {} bytes restored; attempts {})",
        j.progress_percentage, j.files_recovered, j.bytes_recovered, j.attempts
    );
    if let Some(v) = j.verification_passed {
        println!("  verified:  {}", if v { "passed" } else { "FAILED" });
    }
    if let Some(w) = &j.waiting_reason {
        println!("  waiting:   {w}");
    }
    if let Some(e) = &j.error_message {
        println!("  error:     {e}");
    }
}

fn print_detail(d: &RecoveryJobDetail) {
    print_job(&d.job);
    for v in &d.validations {
        println!(
            "  validation {}: {} files / {} bytes checked, {} mismatched, {} missing, {} extra ({})",
            if v.passed { "passed" } else { "FAILED" },
            v.files_checked,
            v.bytes_checked,
            v.mismatches,
            v.missing,
            v.extra,
            v.completed_at.to_rfc3339()
        );
    }
    if !d.logs.is_empty() {
        println!("  log:");
        for l in &d.logs {
            println!(
                "    {} {:<8} {:<10} {}",
                l.created_at.to_rfc3339(),
                l.level,
                l.step,
                l.message
            );
        }
    }
}

fn print_scenario(sc: &DisasterScenarioInfo) {
    let hours = |s: Option<i64>| {
        s.map(|s| format!("{:.1} h", s as f64 / 3600.0))
            .unwrap_or_else(|| "-".into())
    };
    println!("{}  ({}, {})", sc.name, sc.scenario_kind, sc.id);
    println!(
        "  roles: {}   RTO {}   RPO {}   restores as {}",
        sc.responsible_roles.join(", "),
        hours(sc.expected_rto_seconds),
        hours(sc.expected_rpo_seconds),
        recovery::type_to_db(sc.recovery_type)
    );
    if let Some(steps) = sc.steps.as_array() {
        for (i, step) in steps.iter().enumerate() {
            println!(
                "  {}. {} [{}]",
                i + 1,
                step["title"].as_str().unwrap_or(""),
                step["role"].as_str().unwrap_or("")
            );
        }
    }
    println!();
}
