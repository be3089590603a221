//! Where each entry of a recovery point goes in the target, decided in listing order: the same
//! listing always gives the same places, so a validation that replays it ([`Placement::place`]
//! over the same entries, in the same order) checks every file where the restore put it.
//!
//! Before anything else the entry's metadata MAC is verified ([`authenticate`]); an entry
//! without one, or whose MAC does not verify, is refused and takes no place. Then its path is
//! mapped to a name the target can hold ([`names::local_rel_path`]). On a target that does not
//! tell letter case apart, two entries whose paths differ only by case (Unicode lowercase of the
//! whole local path) never land on one name: the first keeps it, a later file (or a folder
//! meeting a file) gets a tagged name ([`names::case_name`]); folders simply merge, and the
//! children of a renamed folder follow it.
//!
//! The folded paths already taken live in a temporary SQLite table on disk (deleted when the
//! placement is dropped), so memory stays bounded whatever the number of entries. Nothing
//! survives a crash: the table is rebuilt from the listing by the next run.

use std::path::{Path, PathBuf};

use keepsake_common::api::{FileAtPoint, FileKind};
use keepsake_common::mac::EntryMacKey;
use keepsake_common::path::wire_path_bytes;
use rusqlite::{params, Connection, OptionalExtension};

use super::names::{self, case_name, case_tag, fold_case, os_bytes, os_from_bytes, NameRules};

/// Tagged names tried for one entry before giving up.
const MAX_CASE_ATTEMPTS: u32 = 16;
/// Table writes per transaction.
const WRITES_PER_COMMIT: u32 = 10_000;

/// Why an entry has no place.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// Its metadata MAC is missing or does not verify: it is not restored.
    #[error("metadata not authenticated: {path} refused ({why})")]
    Refused {
        /// The entry's path.
        path: String,
        /// Missing or wrong.
        why: &'static str,
    },
    /// Its path cannot be restored here.
    #[error("{0}")]
    Name(String),
    /// The on-disk table failed.
    #[error("case table: {0}")]
    Table(String),
}

impl From<rusqlite::Error> for PlaceError {
    fn from(e: rusqlite::Error) -> Self {
        PlaceError::Table(e.to_string())
    }
}

/// Where an entry goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Its path relative to the target.
    pub rel: PathBuf,
    /// Whether that differs from its name in the point (a safe name, or a case tag here or
    /// in a parent folder).
    pub renamed: bool,
}

/// Checks `f`'s metadata MAC under `key`.
pub fn authenticate(key: &EntryMacKey, f: &FileAtPoint) -> Result<(), PlaceError> {
    let why = match &f.mac {
        None => "it has no MAC",
        Some(mac) if !key.verify(&f.facts(), mac) => "its MAC does not verify",
        Some(_) => return Ok(()),
    };
    Err(PlaceError::Refused {
        path: f.path.clone(),
        why,
    })
}

fn bytes(p: &Path) -> Vec<u8> {
    os_bytes(p.as_os_str()).into_owned()
}

struct CaseTable {
    conn: Connection,
    writes: u32,
    // Last, so that the connection closes before the folder is removed.
    _dir: tempfile::TempDir,
}

impl CaseTable {
    fn new() -> Result<CaseTable, PlaceError> {
        let dir = tempfile::Builder::new()
            .prefix("keepsake-restore-")
            .tempdir()
            .map_err(|e| PlaceError::Table(format!("temporary folder: {e}")))?;
        let conn = Connection::open(dir.path().join("case.db"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA temp_store = FILE;
             PRAGMA cache_size = -8192;
             CREATE TABLE occupied (folded BLOB PRIMARY KEY, is_dir INTEGER NOT NULL,
                                    placed BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE dirs (local BLOB PRIMARY KEY, placed BLOB NOT NULL) WITHOUT ROWID;
             BEGIN;",
        )?;
        Ok(CaseTable {
            conn,
            writes: 0,
            _dir: dir,
        })
    }

    fn wrote(&mut self) -> Result<(), PlaceError> {
        self.writes += 1;
        if self.writes >= WRITES_PER_COMMIT {
            self.conn.execute_batch("COMMIT; BEGIN;")?;
            self.writes = 0;
        }
        Ok(())
    }

    fn occupied(&self, folded: &[u8]) -> Result<Option<(bool, Vec<u8>)>, PlaceError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT is_dir, placed FROM occupied WHERE folded = ?1")?;
        Ok(st
            .query_row(params![folded], |r| {
                Ok((r.get::<_, i64>(0)? != 0, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?)
    }

    fn occupy(&mut self, folded: &[u8], is_dir: bool, placed: &[u8]) -> Result<(), PlaceError> {
        self.conn
            .prepare_cached("INSERT INTO occupied (folded, is_dir, placed) VALUES (?1, ?2, ?3)")?
            .execute(params![folded, i64::from(is_dir), placed])?;
        self.wrote()
    }

    fn dir_placed(&self, local: &[u8]) -> Result<Option<Vec<u8>>, PlaceError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT placed FROM dirs WHERE local = ?1")?;
        Ok(st
            .query_row(params![local], |r| r.get::<_, Vec<u8>>(0))
            .optional()?)
    }

    fn map_dir(&mut self, local: &[u8], placed: &[u8]) -> Result<(), PlaceError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO dirs (local, placed) VALUES (?1, ?2)")?
            .execute(params![local, placed])?;
        self.wrote()
    }
}

/// Maps the entries of a listing, in order, to their places in the target.
pub struct Placement {
    rules: NameRules,
    key: EntryMacKey,
    case: Option<CaseTable>,
    /// The last parent folder looked up: (local path, placed path).
    last_parent: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("rules", &self.rules)
            .field("case_insensitive", &self.case.is_some())
            .finish()
    }
}

impl Placement {
    /// A placement under `rules`, for a target that does (`case_insensitive`) or does not fold
    /// letter case, checking MACs with `key`.
    pub fn new(
        rules: NameRules,
        case_insensitive: bool,
        key: EntryMacKey,
    ) -> Result<Placement, PlaceError> {
        Ok(Placement {
            rules,
            key,
            case: if case_insensitive {
                Some(CaseTable::new()?)
            } else {
                None
            },
            last_parent: None,
        })
    }

    /// Whether case collisions are resolved.
    pub fn case_insensitive(&self) -> bool {
        self.case.is_some()
    }

    /// Where `f` goes (call for every entry of the listing, in listing order).
    pub fn place(&mut self, f: &FileAtPoint) -> Result<Placed, PlaceError> {
        authenticate(&self.key, f)?;
        let (local, renamed) = names::local_rel_path(&f.path, f.raw_path.as_deref(), self.rules)
            .map_err(PlaceError::Name)?;
        if self.case.is_none() {
            return Ok(Placed {
                rel: local,
                renamed,
            });
        }
        let Some(name) = local.file_name().map(|n| n.to_os_string()) else {
            return Err(PlaceError::Name(format!("{}: empty path", f.path)));
        };
        let parent_local = local.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent = self.placed_dir(&parent_local)?;
        let is_dir = f.kind == FileKind::Directory;
        let Some(table) = self.case.as_mut() else {
            return Err(PlaceError::Table("no table".into()));
        };
        let mut placed = parent.join(&name);
        let folded = fold_case(&bytes(&placed));
        match table.occupied(&folded)? {
            None => table.occupy(&folded, is_dir, &bytes(&placed))?,
            // Folders that differ only by case merge into the first one.
            Some((true, first)) if is_dir => placed = PathBuf::from(os_from_bytes(first)),
            Some(_) => {
                let original = wire_path_bytes(&f.path);
                let mut found = None;
                for attempt in 0..MAX_CASE_ATTEMPTS {
                    let tag = case_tag(&original, attempt);
                    let candidate = parent.join(case_name(&name, &tag, is_dir));
                    let folded = fold_case(&bytes(&candidate));
                    if table.occupied(&folded)?.is_none() {
                        table.occupy(&folded, is_dir, &bytes(&candidate))?;
                        found = Some(candidate);
                        break;
                    }
                }
                placed = found.ok_or_else(|| {
                    PlaceError::Name(format!(
                        "{}: no free name for it on this case-insensitive target",
                        f.path
                    ))
                })?;
            }
        }
        if is_dir && placed != local {
            table.map_dir(&bytes(&local), &bytes(&placed))?;
            self.last_parent = None;
        }
        let renamed = renamed || fold_case(&bytes(&placed)) != fold_case(&bytes(&local));
        Ok(Placed {
            rel: placed,
            renamed,
        })
    }

    /// Where the folder `local` (a local path, before case handling) is: under its nearest
    /// ancestor that was placed elsewhere, or where it is.
    fn placed_dir(&mut self, local: &Path) -> Result<PathBuf, PlaceError> {
        if local.as_os_str().is_empty() {
            return Ok(PathBuf::new());
        }
        if let Some((l, p)) = &self.last_parent {
            if l == local {
                return Ok(p.clone());
            }
        }
        let Some(table) = self.case.as_ref() else {
            return Ok(local.to_path_buf());
        };
        let comps: Vec<&std::ffi::OsStr> = local.iter().collect();
        let mut out = PathBuf::new();
        let mut from = 0;
        for i in (1..=comps.len()).rev() {
            let prefix: PathBuf = comps[..i].iter().collect();
            if let Some(p) = table.dir_placed(&bytes(&prefix))? {
                out = PathBuf::from(os_from_bytes(p));
                from = i;
                break;
            }
        }
        for c in &comps[from..] {
            out.push(c);
        }
        self.last_parent = Some((local.to_path_buf(), out.clone()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepsake_common::ids::{ChunkIdKey, ContentHash};

    fn key() -> EntryMacKey {
        EntryMacKey::derive(&ChunkIdKey([3; 32]))
    }

    fn entry(path: &str, kind: FileKind) -> FileAtPoint {
        let mut f = FileAtPoint {
            path: path.into(),
            raw_path: None,
            kind,
            size: 0,
            mtime_ns: None,
            mode: Some(0o644),
            symlink_target: None,
            content_hash: (kind == FileKind::File).then_some(ContentHash([1; 32])),
            chunks: Vec::new(),
            link: None,
            mac: None,
        };
        f.mac = Some(key().mac(&f.facts()));
        f
    }

    fn place_all(ci: bool, list: &[FileAtPoint]) -> Vec<Result<Placed, String>> {
        let mut p = Placement::new(NameRules::Unix, ci, key()).unwrap();
        list.iter()
            .map(|f| p.place(f).map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn unauthenticated_entries_are_refused() {
        let good = entry("a.txt", FileKind::File);
        let mut none = entry("b.txt", FileKind::File);
        none.mac = None;
        let mut forged = entry("c.txt", FileKind::File);
        forged.mode = Some(0o104755); // the server changed the mode
        let mut moved = entry("d.txt", FileKind::File);
        moved.path = "elsewhere/d.txt".into(); // or the path
        let out = place_all(false, &[good, none, forged, moved]);
        assert!(out[0].is_ok());
        for r in &out[1..] {
            let e = r.as_ref().unwrap_err();
            assert!(e.starts_with("metadata not authenticated: "), "{e}");
            assert!(e.contains("refused"), "{e}");
        }
    }

    #[test]
    fn case_collisions_get_tagged_names_and_folders_merge() {
        let list = [
            entry("DCIM", FileKind::Directory),
            entry("DCIM/IMG.jpg", FileKind::File),
            entry("DCIM/img.JPG", FileKind::File),
            entry("dcim", FileKind::Directory),
            entry("dcim/other.jpg", FileKind::File),
            entry("dcim/IMG.JPG", FileKind::File),
            entry("notes", FileKind::File),
            entry("Notes", FileKind::Directory),
            entry("Notes/a.txt", FileKind::File),
            entry("Notes/b", FileKind::Directory),
            entry("Notes/b/c.txt", FileKind::File),
        ];
        let out: Vec<Placed> = place_all(true, &list)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let rel = |i: usize| out[i].rel.to_string_lossy().into_owned();
        assert_eq!(rel(0), "DCIM");
        assert_eq!(rel(1), "DCIM/IMG.jpg");
        assert!(!out[1].renamed);
        let tagged = rel(2);
        assert!(
            tagged.starts_with("DCIM/img~case-") && tagged.ends_with(".JPG"),
            "{tagged}"
        );
        assert!(out[2].renamed);
        // The folder merges into the first one, its children go there.
        assert_eq!(rel(3), "DCIM");
        assert!(!out[3].renamed);
        assert_eq!(rel(4), "DCIM/other.jpg");
        assert!(!out[4].renamed);
        let third = rel(5);
        assert!(third.starts_with("DCIM/IMG~case-"), "{third}");
        assert_ne!(third, tagged);
        // A folder meeting a file is renamed, and its children follow it.
        assert_eq!(rel(6), "notes");
        let folder = rel(7);
        assert!(folder.starts_with("Notes~case-"), "{folder}");
        assert!(out[7].renamed);
        assert_eq!(rel(8), format!("{folder}/a.txt"));
        assert!(out[8].renamed);
        assert_eq!(rel(10), format!("{folder}/b/c.txt"));
        // Same listing, same places (what validation relies on).
        let again: Vec<Placed> = place_all(true, &list)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(again, out);
        // On a case-sensitive target nothing is renamed.
        for (p, f) in place_all(false, &list).into_iter().zip(&list) {
            assert_eq!(p.unwrap().rel, PathBuf::from(&f.path));
        }
    }

    #[test]
    fn unicode_case_and_long_names() {
        let long = format!("{}.jpg", "É".repeat(125));
        let lower = format!("{}.jpg", "é".repeat(125));
        assert_eq!(long.len(), 254);
        let out = place_all(
            true,
            &[entry(&long, FileKind::File), entry(&lower, FileKind::File)],
        );
        let a = out[0].as_ref().unwrap();
        let b = out[1].as_ref().unwrap();
        assert_eq!(a.rel, PathBuf::from(&long));
        let n = b.rel.to_str().unwrap();
        assert!(n.len() <= 255, "{}", n.len());
        assert!(n.contains("~case-") && n.ends_with(".jpg"), "{n}");
    }

    #[test]
    fn many_entries_stay_on_disk() {
        let mut p = Placement::new(NameRules::Unix, true, key()).unwrap();
        for i in 0..25_000u32 {
            let f = entry(&format!("d{}/F{i}.txt", i % 7), FileKind::File);
            assert!(!p.place(&f).unwrap().renamed);
        }
        let f = entry("d3/f3.TXT", FileKind::File);
        assert!(p.place(&f).unwrap().renamed);
    }
}
