//! Where the older schema set comes from: a directory, or a git revision (`git:REF` reads
//! the same schema paths at REF; `git:REF:PATH` reads PATH, relative to the repository
//! root, at REF).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;
use crate::validate::Source;

/// The older schema set to compare with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Against {
    /// A directory or file of schemas.
    Dir(PathBuf),
    /// Schemas at a git revision.
    Git {
        /// The revision (`origin/main`, `v1.4`, a commit).
        reference: String,
        /// The schema path at that revision, relative to the repository root; `None`
        /// reads the new schemas' own paths.
        path: Option<String>,
    },
}

impl Against {
    /// `git:REF`, `git:REF:PATH`, or a directory.
    pub fn parse(text: &str) -> Self {
        match text.strip_prefix("git:") {
            Some(rest) => match rest.split_once(':') {
                Some((reference, path)) if !path.is_empty() => Self::Git {
                    reference: reference.to_owned(),
                    path: Some(path.to_owned()),
                },
                _ => Self::Git {
                    reference: rest.trim_end_matches(':').to_owned(),
                    path: None,
                },
            },
            None => Self::Dir(PathBuf::from(text)),
        }
    }

    /// The schema files of the older set. `schemas` are the new set's roots (read at the
    /// revision when no path is given). An unreadable directory, revision or path is
    /// [`Error::Usage`] naming it.
    pub fn sources(&self, schemas: &[PathBuf]) -> Result<Vec<Source>, Error> {
        match self {
            Self::Dir(dir) => {
                if !dir.exists() {
                    return Err(Error::Usage(format!(
                        "--against {}: no such directory or file",
                        dir.display()
                    )));
                }
                let mut files = Vec::new();
                crate::write::collect(dir, &mut files).map_err(|e| {
                    Error::Usage(format!("--against {}: cannot be read: {e}", dir.display()))
                })?;
                files.sort();
                files
                    .into_iter()
                    .map(|path| {
                        let text = crate::write::read(&path).map_err(|e| {
                            Error::Usage(format!("--against {}: {e}", dir.display()))
                        })?;
                        Ok(Source { path, text })
                    })
                    .collect()
            }
            Self::Git { reference, path } => {
                let label = match path {
                    Some(p) => format!("git:{reference}:{p}"),
                    None => format!("git:{reference}"),
                };
                let usage = |why: String| Error::Usage(format!("--against {label}: {why}"));
                git(
                    Path::new("."),
                    &[
                        "rev-parse",
                        "--verify",
                        "--quiet",
                        &format!("{reference}^{{commit}}"),
                    ],
                )
                .map_err(|e| {
                    usage(format!(
                        "`{reference}` is not a revision of this repository ({e})"
                    ))
                })?;
                // With a path: relative to the repository root; without: the new schemas'
                // paths, relative to the working directory (`REF:./path`).
                let (cwd, roots): (PathBuf, Vec<String>) = match path {
                    Some(p) => {
                        let top = git(Path::new("."), &["rev-parse", "--show-toplevel"])
                            .map_err(usage)?;
                        (
                            PathBuf::from(top.trim()),
                            vec![p.trim_matches('/').to_owned()],
                        )
                    }
                    None => (
                        PathBuf::from("."),
                        schemas.iter().map(|s| s.display().to_string()).collect(),
                    ),
                };
                let mut sources = Vec::new();
                for root in &roots {
                    let listing = git(
                        &cwd,
                        &["ls-tree", "-r", "--name-only", reference, "--", root],
                    )
                    .map_err(usage)?;
                    let files: Vec<&str> = listing
                        .lines()
                        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
                        .collect();
                    if files.is_empty() {
                        return Err(usage(format!(
                            "no *.yaml schema under `{root}` at `{reference}`"
                        )));
                    }
                    for file in files {
                        let text = git(&cwd, &["show", &format!("{reference}:./{file}")])
                            .map_err(usage)?;
                        sources.push(Source {
                            path: PathBuf::from(format!("{reference}:{file}")),
                            text,
                        });
                    }
                }
                Ok(sources)
            }
        }
    }
}

/// Runs git in `cwd`; its stdout, or why it failed (stderr's first line).
fn git(cwd: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        String::from_utf8(out.stdout).map_err(|_| "git printed a path that is not UTF-8".to_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().next().unwrap_or("git failed").to_owned())
    }
}
