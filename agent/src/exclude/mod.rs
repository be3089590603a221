//! Exclusion rules: one matcher with gitignore semantics over layered rule sources.
//!
//! Layers, from lowest to highest precedence (a higher layer that matches a path, with an
//! ignore *or* a `!` re-include pattern, decides; within one layer the last matching line wins,
//! as in git):
//!
//! 1. built-in photographer defaults ([`DEFAULT_RULES`], matched case-insensitively because
//!    they name operating-system and application artefacts whose case varies);
//! 2. the organisation's rules from the server;
//! 3. local configuration (the agent's `exclude` file, `--exclude` flags);
//! 4. per-folder ignore files (`.keepsakeignore`): a file in folder `D` applies to `D`'s
//!    subtree with patterns relative to `D`; a deeper file beats a shallower one.
//!
//! Layers 1–3 are compiled into one [`ignore::gitignore::Gitignore`] (so the library does the
//! gitignore parsing and matching: negation, `dir/`, anchoring, `**`); each ignore file is its
//! own `Gitignore`. What the library cannot do is written here: the layering across ignore
//! files, "which rule matched" with its source and line, the exclude-if-present markers
//! (`.nobackup`, `CACHEDIR.TAG`) and the size limit.
//!
//! As in git, a path inside an excluded directory is excluded even if a later `!` pattern
//! names it: the scanner never descends into an excluded directory, and
//! [`Matcher::decide`] checks the ancestors first, so both answer the same.
//!
//! Crash behaviour: none; the matcher only reads rule files and answers questions, it writes
//! nothing.

mod config;
mod rules;

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::relpath::{bytes_to_path, RelPath};
use crate::units::format_bytes;

pub use config::{config, matcher_for, ExcludeConfig, LocalRules};
use rules::{read_capped, split_lines, RuleSet, RuleSetBuilder};
pub use rules::{
    Decision, DefaultRule, ExcludeError, MatchedRule, RuleList, RuleSource, DEFAULT_RULES,
};

/// Name of the per-folder ignore file.
pub const DEFAULT_IGNORE_FILE_NAME: &str = ".keepsakeignore";
/// Default exclude-if-present marker: a folder containing it is not backed up.
pub const DEFAULT_MARKER_FILE: &str = ".nobackup";
/// The Cache Directory Tagging marker file name.
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
/// The first bytes a valid `CACHEDIR.TAG` must start with.
pub const CACHEDIR_TAG_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";
/// Ignore files larger than this are truncated (and a problem is reported).
pub const MAX_IGNORE_FILE_BYTES: u64 = 1 << 20;
/// How many folders' rules [`Matcher::decide`] keeps cached before starting over.
const DIR_CACHE_LIMIT: usize = 4096;

/// The rules a folder contributes: its ignore file and whether it carries a marker.
#[derive(Debug)]
pub struct DirRules {
    dir: RelPath,
    ignore: Option<RuleSet>,
    marker: Option<MatchedRule>,
}

impl DirRules {
    /// The folder, relative to the source root.
    pub fn dir(&self) -> &RelPath {
        &self.dir
    }
    /// The marker rule if the folder contains an exclude-if-present marker.
    pub fn marker(&self) -> Option<&MatchedRule> {
        self.marker.as_ref()
    }
    /// Whether the folder has a (non-empty) ignore file.
    pub fn has_ignore_file(&self) -> bool {
        self.ignore.is_some()
    }
}

/// The exclusion matcher for one source root.
#[derive(Debug)]
pub struct Matcher {
    root: PathBuf,
    global: RuleSet,
    ignore_file_name: Option<String>,
    marker_files: Vec<String>,
    cachedir_tag: bool,
    max_file_size: Option<u64>,
    problems: Vec<ExcludeError>,
    cache: Mutex<HashMap<RelPath, Arc<DirRules>>>,
}

impl Matcher {
    /// Compiles the default, server and local layers for the source at `root`. Invalid
    /// patterns are skipped and listed in [`Matcher::problems`].
    pub fn new(root: impl Into<PathBuf>, config: &ExcludeConfig) -> Matcher {
        let mut problems = Vec::new();
        let mut b = RuleSetBuilder::new();
        if config.use_defaults {
            for (i, d) in DEFAULT_RULES.iter().enumerate() {
                b.add(
                    d.pattern,
                    RuleSource::Default,
                    "built-in defaults",
                    i + 1,
                    Some(d.reason),
                    true,
                    &mut problems,
                );
            }
        }
        for (i, p) in config.server.iter().enumerate() {
            b.add(
                p,
                RuleSource::Server,
                "server rules",
                i + 1,
                None,
                false,
                &mut problems,
            );
        }
        for list in &config.local {
            let source = RuleSource::Local {
                origin: list.origin.clone(),
            };
            for (i, p) in list.patterns.iter().enumerate() {
                b.add(
                    p,
                    source.clone(),
                    &list.origin,
                    i + 1,
                    None,
                    false,
                    &mut problems,
                );
            }
        }
        let global = b.build("exclusion rules", &mut problems);
        Matcher {
            root: root.into(),
            global,
            ignore_file_name: config.ignore_file_name.clone().filter(|n| !n.is_empty()),
            marker_files: config.marker_files.clone(),
            cachedir_tag: config.cachedir_tag,
            max_file_size: config.max_file_size,
            problems,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The source root the rules apply to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Problems found while compiling the global layers.
    pub fn problems(&self) -> &[ExcludeError] {
        &self.problems
    }

    /// The configured maximum file size.
    pub fn max_file_size(&self) -> Option<u64> {
        self.max_file_size
    }

    /// The per-folder ignore file name, if enabled.
    pub fn ignore_file_name(&self) -> Option<&str> {
        self.ignore_file_name.as_deref()
    }

    /// Reads the rules folder `dir` contributes (its ignore file, its markers), without
    /// caching. Problems (unreadable ignore file, invalid pattern) are returned alongside;
    /// a folder that cannot be searched at all yields no problem here because the scanner
    /// reports the folder itself.
    pub fn load_dir_rules(&self, dir: &RelPath) -> (DirRules, Vec<ExcludeError>) {
        let abs = dir.under(&self.root);
        let mut problems = Vec::new();
        let marker = self.find_marker(&abs, &mut problems);
        let mut ignore = None;
        if let Some(name) = &self.ignore_file_name {
            let path = abs.join(name);
            let file_rel = dir.join_name(name.as_bytes());
            match read_capped(&path) {
                Ok((bytes, truncated)) => {
                    if truncated {
                        problems.push(ExcludeError::TooLarge {
                            path: file_rel.display().into_owned(),
                            max: MAX_IGNORE_FILE_BYTES,
                        });
                    }
                    let origin = file_rel.display().into_owned();
                    let mut b = RuleSetBuilder::new();
                    let source = RuleSource::IgnoreFile {
                        file: file_rel.clone(),
                    };
                    for (line, raw) in split_lines(&bytes) {
                        match std::str::from_utf8(raw) {
                            Ok(p) => {
                                b.add(p, source.clone(), &origin, line, None, false, &mut problems)
                            }
                            Err(_) => problems.push(ExcludeError::InvalidPattern {
                                origin: origin.clone(),
                                line,
                                pattern: String::from_utf8_lossy(raw).into_owned(),
                                message: "pattern is not valid UTF-8".to_string(),
                            }),
                        }
                    }
                    let set = b.build(&origin, &mut problems);
                    if !set.rules.is_empty() {
                        ignore = Some(set);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e)
                    if e.kind() == io::ErrorKind::PermissionDenied
                        && fs::symlink_metadata(&path).is_err() =>
                {
                    // The folder itself is not searchable; the scanner reports the folder.
                }
                Err(e) => problems.push(ExcludeError::ReadRules {
                    path: file_rel.display().into_owned(),
                    source: e,
                }),
            }
        }
        (
            DirRules {
                dir: dir.clone(),
                ignore,
                marker,
            },
            problems,
        )
    }

    fn find_marker(&self, abs_dir: &Path, problems: &mut Vec<ExcludeError>) -> Option<MatchedRule> {
        for name in &self.marker_files {
            let p = abs_dir.join(name);
            match fs::symlink_metadata(&p) {
                Ok(_) => {
                    return Some(MatchedRule {
                        pattern: name.clone(),
                        source: RuleSource::Marker { file: name.clone() },
                        line: None,
                        negated: false,
                        reason: Some(format!("the folder contains the marker file {name}")),
                        via: None,
                    })
                }
                Err(e) if is_absent(&e) => {}
                Err(e) => problems.push(ExcludeError::Marker {
                    path: p.display().to_string(),
                    source: e,
                }),
            }
        }
        if self.cachedir_tag {
            let p = abs_dir.join(CACHEDIR_TAG);
            match read_tag_prefix(&p) {
                Ok(true) => {
                    return Some(MatchedRule {
                        pattern: CACHEDIR_TAG.to_string(),
                        source: RuleSource::Marker { file: CACHEDIR_TAG.to_string() },
                        line: None,
                        negated: false,
                        reason: Some(
                            "the folder is tagged as a cache directory (CACHEDIR.TAG with the standard signature)"
                                .to_string(),
                        ),
                        via: None,
                    })
                }
                Ok(false) => {}
                Err(e) if is_absent(&e) => {}
                Err(e) => problems.push(ExcludeError::Marker { path: p.display().to_string(), source: e }),
            }
        }
        None
    }

    /// Pattern layers only: the rule deciding `rel` given the rules of its ancestor folders
    /// (`chain`, root first; entries that are not ancestors of `rel` are ignored). Returns
    /// `None` when no pattern matches; a returned rule with `negated` re-includes.
    pub fn match_patterns(
        &self,
        chain: &[Arc<DirRules>],
        rel: &RelPath,
        is_dir: bool,
    ) -> Option<MatchedRule> {
        if rel.is_root() {
            return None;
        }
        for dr in chain.iter().rev() {
            let Some(set) = &dr.ignore else { continue };
            let Some(sub) = rel.strip_dir(&dr.dir) else {
                continue;
            };
            if let Some(m) = set.matched(&bytes_to_path(sub), is_dir) {
                return Some(m);
            }
        }
        self.global.matched(&rel.to_path(), is_dir)
    }

    /// The size-limit rule if a regular file of `size` bytes exceeds the limit.
    pub fn size_rule(&self, size: u64) -> Option<MatchedRule> {
        let limit = self.max_file_size?;
        (size > limit).then(|| MatchedRule {
            pattern: format!("size > {}", format_bytes(limit)),
            source: RuleSource::SizeLimit { limit },
            line: None,
            negated: false,
            reason: Some(format!(
                "the file is larger than the {} limit",
                format_bytes(limit)
            )),
            via: None,
        })
    }

    /// Decides one path without a walk (for a real-time watcher or `keepsake exclude test`):
    /// loads and caches the ignore files and markers of the ancestor folders, and excludes the
    /// path if an ancestor is excluded. Use [`Matcher::decide_with_size`] to apply the size
    /// limit too.
    pub fn decide(&self, rel: &RelPath, is_dir: bool) -> Decision {
        self.decide_with_size(rel, is_dir, None)
    }

    /// [`Matcher::decide`] plus the size limit for a regular file of `size` bytes.
    pub fn decide_with_size(&self, rel: &RelPath, is_dir: bool, size: Option<u64>) -> Decision {
        let root_rules = self.cached_dir_rules(&RelPath::root());
        if let Some(m) = root_rules.marker() {
            let via = (!rel.is_root()).then(RelPath::root);
            return Decision::excluded(m.clone().with_via(via));
        }
        if rel.is_root() {
            return Decision::included(None);
        }
        let mut chain = vec![root_rules];
        for anc in rel.ancestors() {
            if let Some(m) = self.match_patterns(&chain, &anc, true) {
                if !m.negated {
                    return Decision::excluded(m.with_via(Some(anc)));
                }
            }
            let rules = self.cached_dir_rules(&anc);
            if let Some(m) = rules.marker() {
                return Decision::excluded(m.clone().with_via(Some(anc)));
            }
            chain.push(rules);
        }
        let m = self.match_patterns(&chain, rel, is_dir);
        if let Some(m) = &m {
            if !m.negated {
                return Decision::excluded(m.clone());
            }
        }
        if is_dir {
            if let Some(marker) = self.cached_dir_rules(rel).marker() {
                return Decision::excluded(marker.clone());
            }
        } else if let Some(rule) = size.and_then(|s| self.size_rule(s)) {
            return Decision::excluded(rule);
        }
        Decision::included(m)
    }

    /// Forgets the cached rules of `dir` (call when its ignore file or marker changes).
    pub fn invalidate_dir(&self, dir: &RelPath) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(dir);
    }

    /// Forgets all cached folder rules.
    pub fn clear_cache(&self) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn cached_dir_rules(&self, dir: &RelPath) -> Arc<DirRules> {
        if let Some(r) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(dir)
        {
            return Arc::clone(r);
        }
        let (rules, problems) = self.load_dir_rules(dir);
        for p in problems {
            tracing::warn!(dir = %dir, "{p}");
        }
        let rules = Arc::new(rules);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= DIR_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(dir.clone(), Arc::clone(&rules));
        rules
    }
}

fn is_absent(e: &io::Error) -> bool {
    // Permission denied means the folder itself is not searchable: the scanner reports it.
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || e.raw_os_error() == Some(libc_enotdir())
}

fn libc_enotdir() -> i32 {
    #[cfg(unix)]
    {
        libc::ENOTDIR
    }
    #[cfg(not(unix))]
    {
        -1
    }
}

/// Whether `path` is a regular file starting with the CACHEDIR.TAG signature.
fn read_tag_prefix(path: &Path) -> io::Result<bool> {
    let md = fs::symlink_metadata(path)?;
    if !md.is_file() {
        return Ok(false);
    }
    let mut buf = [0u8; CACHEDIR_TAG_SIGNATURE.len()];
    let mut f = fs::File::open(path)?;
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            return Ok(false);
        }
        got += n;
    }
    Ok(buf == CACHEDIR_TAG_SIGNATURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_defaults_compile() {
        let m = Matcher::new("/nonexistent", &ExcludeConfig::default());
        assert!(m.problems().is_empty(), "{:?}", m.problems());
        assert_eq!(m.global.rules.len(), DEFAULT_RULES.len());
    }

    #[test]
    fn labels() {
        let r = MatchedRule {
            pattern: "*.jpg".into(),
            source: RuleSource::IgnoreFile {
                file: RelPath::from_bytes(b"a/.keepsakeignore".to_vec()).unwrap(),
            },
            line: Some(3),
            negated: false,
            reason: None,
            via: None,
        };
        assert_eq!(r.label(), "a/.keepsakeignore:3: *.jpg");
        let s = MatchedRule {
            source: RuleSource::SizeLimit { limit: 1024 },
            pattern: "x".into(),
            ..r
        };
        assert_eq!(s.label(), "size limit: > 1.0 KiB");
    }

    #[test]
    fn split_lines_handles_bom_and_crlf() {
        let v: Vec<_> = split_lines(b"\xef\xbb\xbfa\r\nb\n").collect();
        assert_eq!(v, vec![(1, &b"a"[..]), (2, &b"b"[..]), (3, &b""[..])]);
    }
}
