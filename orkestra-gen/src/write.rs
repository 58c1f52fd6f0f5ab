//! The file system side: finding schema files, reading them, writing output only when
//! it changed.

use std::path::{Path, PathBuf};

use crate::Error;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// A file's text.
pub(crate) fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// `path` itself when it is a file, else every `*.yaml` / `*.yml` below it.
pub(crate) fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    if std::fs::metadata(path).map_err(io(path))?.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).map_err(io(path))? {
        let p = entry.map_err(io(path))?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    Ok(())
}

/// Writes `content` unless the file already holds exactly it (keeps mtimes stable, so
/// cargo does not rebuild for nothing). Returns whether it wrote.
pub(crate) fn write_if_changed(path: &Path, content: &str) -> Result<bool, Error> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(path, content).map_err(io(path))?;
    Ok(true)
}
