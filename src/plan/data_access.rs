//! Which files a calculation may read (DESIGN §7). DuckDB runs with external access
//! off but for the Warehouse's data directories, so whoever may write a table or a
//! Warehouse in a namespace reads that namespace's data, and not the worker's
//! ServiceAccount token, a Secret mounted elsewhere, or `/proc/self/environ`.

/// Directories a data directory may not be, lie in or contain: the worker's
/// credentials, the kernel's views of processes, devices and the system, and the
/// system's configuration.
const FORBIDDEN: [&str; 6] = [
    "/var/run/secrets",
    "/run/secrets",
    "/proc",
    "/sys",
    "/dev",
    "/etc",
];

/// Glob characters DuckDB expands in a `files` source (`**` is two `*`).
const GLOB: [char; 3] = ['*', '?', '['];

/// The path's components, if it is absolute and has no `..` (which would let
/// `/data/../etc` pass a prefix check) or `.`.
fn plain_absolute(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').filter(|part| !part.is_empty()).collect();
    if parts.iter().any(|part| *part == "." || *part == "..") {
        return None;
    }
    Some(parts)
}

/// Why `directory` cannot be a data directory, if it cannot.
pub fn check_data_directory(directory: &str) -> Result<(), String> {
    let parts = plain_absolute(directory)
        .ok_or_else(|| format!("{directory:?} must be an absolute path without . or .."))?;
    if parts.is_empty() {
        return Err(
            "\"/\" would open every file of the worker; name the data's own directory".into(),
        );
    }
    for forbidden in FORBIDDEN {
        let forbidden_parts = plain_absolute(forbidden).unwrap_or_default();
        let shared = parts
            .iter()
            .zip(&forbidden_parts)
            .take_while(|(a, b)| a == b)
            .count();
        if shared == parts.len().min(forbidden_parts.len()) {
            return Err(format!(
                "{directory:?} overlaps {forbidden}, which holds credentials or system files: \
                 mount the data elsewhere (e.g. /data)"
            ));
        }
    }
    Ok(())
}

/// Whether `files` is a glob rather than one file's path.
pub fn is_glob(files: &str) -> bool {
    files.contains(GLOB)
}

/// The directory every file that `files` (a path or a glob) can match lies in: what
/// comes before the last `/` ahead of the first glob character (`/data/*/x.csv` and
/// `/data/x.csv` lie in `/data`). Empty for a relative path without a directory.
pub fn files_directory(files: &str) -> &str {
    let fixed = files.find(GLOB).map_or(files, |glob| &files[..glob]);
    match fixed.rfind('/') {
        Some(0) => "/",
        Some(slash) => &fixed[..slash],
        None => "",
    }
}

/// Whether every file `files` (a path or a glob) can match lies under one of
/// `directories`.
pub fn within(files: &str, directories: &[String]) -> bool {
    if files.split('/').any(|part| part == "." || part == "..") {
        return false;
    }
    let Some(path) = plain_absolute(files_directory(files)) else {
        return false;
    };
    directories
        .iter()
        .filter_map(|directory| plain_absolute(directory))
        .any(|root| path.starts_with(&root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_directories_keep_away_from_credentials_and_system_files() {
        for good in [
            "/data",
            "/tally-data",
            "/var/lib/warehouse/exports",
            "/mnt/s3",
        ] {
            assert_eq!(check_data_directory(good), Ok(()), "{good}");
        }
        for bad in [
            "/",
            "/var",
            "/var/run",
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "/run",
            "/proc/self",
            "/etc",
            "/dev/shm",
            "data",
            "/data/../etc",
            "/data/./x",
        ] {
            assert!(check_data_directory(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_directory_of_files_is_before_the_first_glob() {
        assert_eq!(files_directory("/data/x.csv"), "/data");
        assert_eq!(files_directory("/data/2026/*.parquet"), "/data/2026");
        assert_eq!(files_directory("/data/*/facts.csv"), "/data");
        assert_eq!(files_directory("/data*"), "/");
        assert_eq!(files_directory("/x.csv"), "/");
        assert_eq!(files_directory("x.csv"), "");
        assert!(is_glob("/data/[ab].csv") && !is_glob("/data/a.csv"));
    }

    #[test]
    fn files_must_lie_under_a_data_directory() {
        let dirs = vec!["/data".to_string(), "/tally-data/".to_string()];
        for inside in [
            "/data/exposures.csv.gz",
            "/data/2026/*.parquet",
            "/data/*/facts.csv",
            "/tally-data/x.csv",
            "/data/sub/dir/file.csv",
        ] {
            assert!(within(inside, &dirs), "{inside} refused");
        }
        for outside in [
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "/proc/self/environ",
            "/data",
            "/data*",
            "/database.csv",
            "/data/../etc/passwd",
            "/*",
            "data/exposures.csv",
            "/tally-data2/x.csv",
        ] {
            assert!(!within(outside, &dirs), "{outside} accepted");
        }
    }
}
