//! Recovery points (`recovery_points` with their machine and source): listing, one point, and
//! the source and sequence a point stands for (what [`super::files_at`] reads).
//!
//! Read-only: nothing here writes, so a crash changes nothing.

use keepsake_common::api::RecoveryPointInfo;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::db::DbError;

const POINT_COLS: &str = "rp.id, rp.source_id, rp.agent_id, a.name, s.root_path, rp.seq, rp.point_in_time, \
     rp.file_count::bigint, rp.backup_size_bytes, rp.is_wedding_critical \
     FROM recovery_points rp JOIN agents a ON a.id = rp.agent_id JOIN backup_sources s ON s.id = rp.source_id";

fn point(r: &tokio_postgres::Row) -> RecoveryPointInfo {
    RecoveryPointInfo {
        id: r.get(0),
        source_id: r.get(1),
        agent_id: r.get(2),
        agent_name: r.get(3),
        root_path: r.get(4),
        seq: r.get(5),
        point_in_time: r.get(6),
        file_count: r.get(7),
        backup_size_bytes: r.get(8),
        is_wedding_critical: r.get(9),
    }
}

/// Recovery points the caller may see, newest first, optionally of one source or machine.
pub async fn list_points(
    tx: &Transaction<'_>,
    source: Option<Uuid>,
    agent: Option<Uuid>,
    limit: i64,
) -> Result<Vec<RecoveryPointInfo>, DbError> {
    let rows = tx
        .query(
            &format!(
                "SELECT {POINT_COLS} WHERE rp.source_id IS NOT NULL \
                 AND ($1::uuid IS NULL OR rp.source_id = $1) AND ($2::uuid IS NULL OR rp.agent_id = $2) \
                 ORDER BY rp.point_in_time DESC, rp.seq DESC LIMIT $3"
            ),
            &[&source, &agent, &limit],
        )
        .await?;
    Ok(rows.iter().map(point).collect())
}

/// One recovery point.
pub async fn get_point(
    tx: &Transaction<'_>,
    id: Uuid,
) -> Result<Option<RecoveryPointInfo>, DbError> {
    Ok(tx
        .query_opt(&format!("SELECT {POINT_COLS} WHERE rp.id = $1"), &[&id])
        .await?
        .map(|r| point(&r)))
}

/// The source and sequence of point `id` (a backup point, not a recovery job's).
pub async fn point_source(tx: &Transaction<'_>, id: Uuid) -> Result<Option<(Uuid, i64)>, DbError> {
    Ok(tx
        .query_opt(
            "SELECT source_id, seq FROM recovery_points WHERE id = $1 AND source_id IS NOT NULL",
            &[&id],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}
