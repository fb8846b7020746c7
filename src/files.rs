//! The files the Gateway API and the loaders work with, definitions and policies alike:
//! listing a directory's `*.json`, writing one atomically, and the file name an id gets.

use std::path::{Path, PathBuf};

/// The `*.json` files in `dir`, in name order.
pub fn json_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, synced, then
/// renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("api"),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The file name for an id (an API's or a policy's): the id, restricted to safe characters.
pub fn file_name_for(id: &str) -> Option<String> {
    let safe = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !id.starts_with('.');
    safe.then(|| format!("{id}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_file_names_only() {
        assert_eq!(file_name_for("abc-1").as_deref(), Some("abc-1.json"));
        assert!(file_name_for("../etc/passwd").is_none());
        assert!(file_name_for("").is_none());
    }
}
