//! The path prefixes a job restores, as the restore and the validation walk them: trimmed,
//! sorted, without duplicates or prefixes inside another, `[""]` for the whole tree. Pure
//! function: no IO, no state.

/// The job's path prefixes without duplicates or prefixes inside others (`a` covers `a/b`);
/// `[""]` (everything) when empty or when one of them is empty.
pub fn normalize_prefixes(prefixes: &[String]) -> Vec<String> {
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
