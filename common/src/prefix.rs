//! Path prefixes of a recovery job: "restore only these folders or files of the source".
//!
//! A prefix is relative to the backup source root, '/'-separated, without empty, `.` or `..`
//! components, without control characters, at most [`MAX_PREFIX_LEN`] bytes; one trailing '/'
//! is allowed and dropped. A job names at most [`MAX_PREFIXES`] of them, and none at all means
//! the whole tree. These are the rules of the database's `relative_paths_valid` (the server
//! refuses a request that breaks them) and the agent checks them again on each job it claims.
//!
//! Two forms:
//!
//! - [`PathPrefixes`]: a job's prefixes as named, validated ([`PathPrefixes::parse`]), trailing
//!   '/' dropped and duplicates removed, in the order first named. This is what a job stores and
//!   what its type is checked against (a file recovery names exactly one).
//! - the walk list ([`PathPrefixes::walk`], [`walk_list`]): the prefixes a restore (and its
//!   validation) walks, each part of the tree once — sorted, without prefixes inside another
//!   (`a` covers `a/b`, not `ab`), and `[""]` for the whole tree.
//!
//! Pure functions: no IO, no state.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::fmt;

/// At most this many prefixes per job.
pub const MAX_PREFIXES: usize = 1000;
/// Longest prefix accepted, in bytes (after the trailing '/' is dropped).
pub const MAX_PREFIX_LEN: usize = 32768;

/// What is wrong with one prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixProblem {
    /// Nothing (or only a '/').
    Empty,
    /// Starts with '/'.
    Absolute,
    /// Over [`MAX_PREFIX_LEN`] bytes.
    TooLong,
    /// Holds a control character.
    ControlCharacters,
    /// Has an empty, `.` or `..` component.
    BadComponent,
}

impl fmt::Display for PrefixProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrefixProblem::Empty => "is empty",
            PrefixProblem::Absolute => "is absolute",
            PrefixProblem::TooLong => "is too long",
            PrefixProblem::ControlCharacters => "contains control characters",
            PrefixProblem::BadComponent => "has an empty, `.` or `..` component",
        })
    }
}

/// Why a job's prefixes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// More than [`MAX_PREFIXES`].
    #[error("at most {MAX_PREFIXES} path_prefixes per job")]
    TooMany,
    /// One prefix breaks the rules.
    #[error(
        "path prefix `{prefix}` {problem}: prefixes are relative to the source root, \
         '/'-separated, without `.` or `..`"
    )]
    Invalid {
        /// The prefix as named.
        prefix: String,
        /// What is wrong with it.
        problem: PrefixProblem,
    },
}

/// A job's path prefixes, validated: trailing '/' dropped, duplicates removed, in the order first
/// named. Empty means the whole tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathPrefixes(Vec<String>);

impl PathPrefixes {
    /// Checks every prefix against the rules (the first problem found is the error) and cleans
    /// them up.
    pub fn parse(prefixes: &[String]) -> Result<PathPrefixes, PrefixError> {
        if prefixes.len() > MAX_PREFIXES {
            return Err(PrefixError::TooMany);
        }
        let mut out: Vec<String> = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            let trimmed = p.strip_suffix('/').unwrap_or(p);
            if let Some(problem) = problem_of(trimmed) {
                return Err(PrefixError::Invalid {
                    prefix: p.clone(),
                    problem,
                });
            }
            if !out.iter().any(|x| x == trimmed) {
                out.push(trimmed.to_string());
            }
        }
        Ok(PathPrefixes(out))
    }

    /// No prefix: the whole tree.
    pub fn whole_tree() -> PathPrefixes {
        PathPrefixes(Vec::new())
    }

    /// Whether this names the whole tree.
    pub fn is_whole_tree(&self) -> bool {
        self.0.is_empty()
    }

    /// The prefixes as named (cleaned up).
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The prefixes as named (cleaned up).
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }

    /// The prefixes a restore walks: see [`walk_list`].
    pub fn walk(&self) -> Vec<String> {
        walk_list(&self.0)
    }
}

/// The problem of one prefix (its trailing '/' already dropped), if any.
fn problem_of(p: &str) -> Option<PrefixProblem> {
    if p.is_empty() {
        Some(PrefixProblem::Empty)
    } else if p.starts_with('/') {
        Some(PrefixProblem::Absolute)
    } else if p.len() > MAX_PREFIX_LEN {
        Some(PrefixProblem::TooLong)
    } else if p.chars().any(char::is_control) {
        Some(PrefixProblem::ControlCharacters)
    } else if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        Some(PrefixProblem::BadComponent)
    } else {
        None
    }
}

/// The prefixes a listing walks to cover `prefixes`, each part of the tree once: leading and
/// trailing '/' trimmed, sorted, without duplicates or prefixes inside another (`a` covers
/// `a/b`, not `ab` or `a.txt`); `[""]` (the whole tree) when there are none or one of them is
/// empty. Does not validate: for prefixes already validated ([`PathPrefixes::walk`]) or taken
/// from a listing.
pub fn walk_list(prefixes: &[String]) -> Vec<String> {
    let mut ps: Vec<String> = prefixes
        .iter()
        .map(|p| p.trim_matches('/').to_string())
        .collect();
    if ps.is_empty() || ps.iter().any(String::is_empty) {
        return vec![String::new()];
    }
    ps.sort();
    ps.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in ps {
        let covered = out
            .iter()
            .any(|q| p == *q || (p.starts_with(q.as_str()) && p.as_bytes()[q.len()] == b'/'));
        if !covered {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn parse(a: &[&str]) -> Result<Vec<String>, PrefixError> {
        PathPrefixes::parse(&v(a)).map(PathPrefixes::into_vec)
    }

    #[test]
    fn parse_drops_one_trailing_slash_and_duplicates_keeping_order() {
        assert_eq!(
            parse(&["2025/Smith/", "2025/Smith", "a"]).unwrap(),
            v(&["2025/Smith", "a"])
        );
        assert_eq!(parse(&["b", "a", "b/"]).unwrap(), v(&["b", "a"]));
        // Covered prefixes are kept as named: a job stores what was asked for.
        assert_eq!(parse(&["a/b", "a"]).unwrap(), v(&["a/b", "a"]));
        assert_eq!(parse(&[]).unwrap(), Vec::<String>::new());
        assert!(PathPrefixes::parse(&[]).unwrap().is_whole_tree());
    }

    #[test]
    fn parse_refuses_what_the_database_refuses() {
        for bad in [
            "/abs", "..", "a/../b", "a//b", "./a", "", "/", "a/.", "a//", "a\nb",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad:?}");
        }
        let long = "a".repeat(MAX_PREFIX_LEN + 1);
        assert!(parse(&[&long]).is_err());
        assert!(parse(&[&"a".repeat(MAX_PREFIX_LEN)]).is_ok());
        assert!(
            parse(&["ok", "/abs"]).is_err(),
            "one bad prefix refuses all"
        );
    }

    #[test]
    fn errors_name_the_prefix_and_the_problem() {
        let cases = [
            ("", PrefixProblem::Empty, "is empty"),
            ("/", PrefixProblem::Empty, "is empty"),
            ("/abs", PrefixProblem::Absolute, "is absolute"),
            (
                "a\tb",
                PrefixProblem::ControlCharacters,
                "contains control characters",
            ),
            (
                "a/../b",
                PrefixProblem::BadComponent,
                "has an empty, `.` or `..` component",
            ),
        ];
        for (p, problem, text) in cases {
            let e = parse(&[p]).unwrap_err();
            assert_eq!(
                e,
                PrefixError::Invalid {
                    prefix: p.to_string(),
                    problem
                }
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "path prefix `{p}` {text}: prefixes are relative to the source root, \
                     '/'-separated, without `.` or `..`"
                )
            );
        }
        let long = format!("{}/", "a".repeat(MAX_PREFIX_LEN + 1));
        assert!(matches!(
            parse(&[&long]),
            Err(PrefixError::Invalid { problem: PrefixProblem::TooLong, ref prefix }) if *prefix == long
        ));
    }

    #[test]
    fn at_most_a_thousand_prefixes() {
        let many: Vec<String> = (0..=MAX_PREFIXES).map(|i| format!("d{i}")).collect();
        let e = PathPrefixes::parse(&many).unwrap_err();
        assert_eq!(e, PrefixError::TooMany);
        assert_eq!(e.to_string(), "at most 1000 path_prefixes per job");
        assert!(PathPrefixes::parse(&many[..MAX_PREFIXES]).is_ok());
    }

    #[test]
    fn walk_list_covers_each_part_of_the_tree_once() {
        assert_eq!(walk_list(&[]), v(&[""]));
        assert_eq!(walk_list(&v(&["a", ""])), v(&[""]));
        assert_eq!(walk_list(&v(&["/a/", "a"])), v(&["a"]));
        assert_eq!(
            walk_list(&v(&["a/b", "a", "ab", "a.txt", "c/d"])),
            v(&["a", "a.txt", "ab", "c/d"])
        );
        assert_eq!(walk_list(&v(&["a/b/c", "a/b"])), v(&["a/b"]));
    }

    #[test]
    fn a_jobs_walk_is_its_validated_prefixes_normalised() {
        let p = PathPrefixes::parse(&v(&["c/d/", "a/b", "a", "c/d"])).unwrap();
        assert_eq!(p.as_slice(), v(&["c/d", "a/b", "a"]));
        assert_eq!(p.walk(), v(&["a", "c/d"]));
        assert_eq!(PathPrefixes::whole_tree().walk(), v(&[""]));
    }
}
