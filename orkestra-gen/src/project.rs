//! `orkestra-gen new`: a service crate that builds, runs and passes its tests at once.
//!
//! ```no_run
//! use orkestra_gen::project::{NewProject, StoreAdapter};
//!
//! let created = NewProject::new("my-shop").store(StoreAdapter::Memory).create()?;
//! println!("created {}", created.dir.display());
//! # Ok::<(), orkestra_gen::Error>(())
//! ```
//!
//! The files come from the templates in `templates/new/`, embedded in the crate. Rust
//! computes every name and dependency line; the templates only place them. Nothing is
//! written unless the name is a valid crate name and the directory is new or empty.

use std::path::{Path, PathBuf};

use heck::ToPascalCase;
use serde::Serialize;

use crate::Error;

/// The templates, by the path they are written to (`NAME` is the crate's name).
const TEMPLATES: &[(&str, &str)] = &[
    (".gitignore", include_str!("../templates/new/gitignore.j2")),
    ("Cargo.toml", include_str!("../templates/new/Cargo.toml.j2")),
    ("README.md", include_str!("../templates/new/README.md.j2")),
    ("build.rs", include_str!("../templates/new/build.rs.j2")),
    (
        "orkestra.toml",
        include_str!("../templates/new/orkestra.toml.j2"),
    ),
    (
        "schemas/NAME.yaml",
        include_str!("../templates/new/schema.yaml.j2"),
    ),
    ("src/lib.rs", include_str!("../templates/new/lib.rs.j2")),
    ("src/main.rs", include_str!("../templates/new/main.rs.j2")),
    (
        "tests/orders.rs",
        include_str!("../templates/new/test.rs.j2"),
    ),
];

/// Where the JSON Schema of the language goes, beside the schema whose modeline names it.
const SCHEMA_JSON: &str = "schemas/orkestra.schema.json";

/// Crates the new crate depends on: a crate of the same name would shadow them.
const DEPENDENCIES: &[&str] = &["orkestra-runtime", "orkestra-gen", "serde_json", "tokio"];

/// Names cargo refuses for a package: the standard library's crates, and the names of
/// its own build directories.
const RESERVED: &[&str] = &[
    "alloc",
    "core",
    "proc_macro",
    "std",
    "test",
    "build",
    "deps",
    "examples",
    "incremental",
];

/// Names Windows keeps for devices: a crate named so cannot be checked out there.
const WINDOWS_DEVICES: &[&str] = &[
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

/// The bus the new service's `orkestra.toml` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BusAdapter {
    /// In-process: nothing to install (the default).
    #[default]
    InProcess,
    /// RabbitMQ on the local broker; the runtime's feature `rabbitmq`.
    RabbitMq,
}

/// The event store the new service's `orkestra.toml` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreAdapter {
    /// The embedded single-file store (the default): nothing to install.
    #[default]
    Sqlite,
    /// PostgreSQL on the local server; the runtime's feature `postgres`.
    Postgres,
    /// In memory: nothing kept across runs.
    Memory,
}

impl BusAdapter {
    /// Its name in `orkestra.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Self::InProcess => "in_process",
            Self::RabbitMq => "rabbitmq",
        }
    }
}

impl StoreAdapter {
    /// Its name in `orkestra.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Memory => "memory",
        }
    }
}

/// A new service crate, to render or to create.
#[derive(Clone, Debug)]
pub struct NewProject {
    name: String,
    dir: Option<PathBuf>,
    bus: BusAdapter,
    store: StoreAdapter,
    orkestra_path: Option<PathBuf>,
}

/// One file of a new project.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectFile {
    /// Its path inside the project (`src/lib.rs`).
    pub path: PathBuf,
    /// Its content.
    pub content: String,
}

/// What [`NewProject::create`] wrote.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Created {
    /// The project's directory.
    pub dir: PathBuf,
    /// Every file written, relative to `dir`, sorted.
    pub files: Vec<PathBuf>,
}

/// What the templates are given: every string already computed.
#[derive(Serialize)]
struct Context<'a> {
    /// The crate's name, `my-shop`.
    name: &'a str,
    /// Its library's name, `my_shop`.
    lib: String,
    /// The app prefix of its namespaces, `MyShop`.
    prefix: String,
    bus: &'static str,
    store: &'static str,
    rust_version: &'static str,
    repository: &'static str,
    runtime_dependency: String,
    gen_dependency: String,
    features_note: &'static str,
}

impl NewProject {
    /// A project named `name`, in `./name`, on the in-process bus and the SQLite store,
    /// depending on this version of Orkestra from crates.io.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            dir: None,
            bus: BusAdapter::default(),
            store: StoreAdapter::default(),
            orkestra_path: None,
        }
    }

    /// Creates it in `dir` instead of `./<name>`.
    #[must_use]
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The bus its `orkestra.toml` names.
    #[must_use]
    pub fn bus(mut self, bus: BusAdapter) -> Self {
        self.bus = bus;
        self
    }

    /// The store its `orkestra.toml` names.
    #[must_use]
    pub fn store(mut self, store: StoreAdapter) -> Self {
        self.store = store;
        self
    }

    /// Depends on a checkout of Orkestra (the directory holding `orkestra-runtime/` and
    /// `orkestra-gen/`) by path instead of by version: for CI, and for trying changes
    /// not yet released.
    #[must_use]
    pub fn orkestra_path(mut self, checkout: impl Into<PathBuf>) -> Self {
        self.orkestra_path = Some(checkout.into());
        self
    }

    /// The directory it is created in.
    pub fn target_dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&self.name))
    }

    /// Every file of the project, rendered, sorted by path; nothing is written.
    /// [`Error::Usage`] when the name is not a valid crate name or the checkout path
    /// is not a checkout.
    pub fn files(&self) -> Result<Vec<ProjectFile>, Error> {
        if let Some(problem) = crate_name_problem(&self.name) {
            return Err(Error::Usage(problem));
        }
        let context = self.context()?;
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        let mut files = Vec::new();
        for (path, template) in TEMPLATES {
            let content = env
                .render_str(template, &context)
                .map_err(|e| Error::Internal(format!("template of `{path}`: {e:#}")))?;
            files.push(ProjectFile {
                path: PathBuf::from(path.replace("NAME", &self.name)),
                content,
            });
        }
        files.push(ProjectFile {
            path: PathBuf::from(SCHEMA_JSON),
            content: crate::language::schema_json(),
        });
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Writes the project. Nothing is written when the name is not a valid crate name
    /// or the directory exists and is not empty ([`Error::Usage`], one line each); a
    /// write that fails removes what was written before it ([`Error::Io`]).
    pub fn create(&self) -> Result<Created, Error> {
        let files = self.files()?;
        let dir = self.target_dir();
        match std::fs::read_dir(&dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(Error::Usage(format!(
                        "{} already exists and is not empty; choose another name or --path",
                        dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if dir.is_file() => {
                return Err(Error::Usage(format!(
                    "{} is a file, not a directory ({e})",
                    dir.display()
                )));
            }
            Err(source) => return Err(Error::Io { path: dir, source }),
        }
        let mut written = Written::default();
        for file in &files {
            if let Err(e) = written.write(&dir, file) {
                written.undo();
                return Err(e);
            }
        }
        Ok(Created {
            dir,
            files: files.into_iter().map(|f| f.path).collect(),
        })
    }

    fn context(&self) -> Result<Context<'_>, Error> {
        let version = env!("CARGO_PKG_VERSION");
        let runtime_features: &[&str] = match (self.bus, self.store) {
            (BusAdapter::InProcess, StoreAdapter::Sqlite) => &[],
            (BusAdapter::InProcess, StoreAdapter::Postgres) => &["postgres"],
            (BusAdapter::InProcess, StoreAdapter::Memory) => &[],
            (BusAdapter::RabbitMq, StoreAdapter::Sqlite) => &["rabbitmq"],
            (BusAdapter::RabbitMq, StoreAdapter::Postgres) => &["rabbitmq", "postgres"],
            (BusAdapter::RabbitMq, StoreAdapter::Memory) => &["rabbitmq"],
        };
        // SQLite is the runtime's default feature: without it, nothing bundled is built.
        let default_features = self.store == StoreAdapter::Sqlite;
        let (runtime_source, gen_source) = match &self.orkestra_path {
            None => (String::new(), String::new()),
            Some(checkout) => {
                let runtime = checkout.join("orkestra-runtime");
                let generator = checkout.join("orkestra-gen");
                for crate_dir in [&runtime, &generator] {
                    if !crate_dir.join("Cargo.toml").is_file() {
                        return Err(Error::Usage(format!(
                            "--orkestra-path {}: no {} in it; give the directory of an Orkestra checkout",
                            checkout.display(),
                            crate_dir.join("Cargo.toml").display()
                        )));
                    }
                }
                (
                    format!(", path = {}", toml_path(&runtime)?),
                    format!(", path = {}", toml_path(&generator)?),
                )
            }
        };
        let mut extras = runtime_source;
        if !default_features {
            extras.push_str(", default-features = false");
        }
        if !runtime_features.is_empty() {
            let list: Vec<String> = runtime_features
                .iter()
                .map(|f| format!("\"{f}\""))
                .collect();
            extras.push_str(&format!(", features = [{}]", list.join(", ")));
        }
        let runtime = if extras.is_empty() {
            format!("\"{version}\"")
        } else {
            format!("{{ version = \"{version}\"{extras} }}")
        };
        let gen_dependency = if gen_source.is_empty() {
            format!("\"{version}\"")
        } else {
            format!("{{ version = \"{version}\"{gen_source} }}")
        };
        let features_note = match (self.bus, self.store) {
            (BusAdapter::InProcess, StoreAdapter::Sqlite) => {
                "The default feature `sqlite` is the embedded store."
            }
            (BusAdapter::InProcess, StoreAdapter::Memory) => {
                "The in-process bus and the memory store need no feature."
            }
            (BusAdapter::InProcess, StoreAdapter::Postgres) => {
                "\"postgres\" is the PostgreSQL store."
            }
            (BusAdapter::RabbitMq, StoreAdapter::Sqlite) => {
                "\"rabbitmq\" is the RabbitMQ bus, the default `sqlite` the embedded store."
            }
            (BusAdapter::RabbitMq, StoreAdapter::Postgres) => {
                "\"rabbitmq\" is the RabbitMQ bus, \"postgres\" the PostgreSQL store."
            }
            (BusAdapter::RabbitMq, StoreAdapter::Memory) => {
                "\"rabbitmq\" is the RabbitMQ bus; the memory store needs no feature."
            }
        };
        Ok(Context {
            name: &self.name,
            lib: self.name.replace('-', "_"),
            prefix: self.name.to_pascal_case(),
            bus: self.bus.name(),
            store: self.store.name(),
            rust_version: env!("CARGO_PKG_RUST_VERSION"),
            repository: env!("CARGO_PKG_REPOSITORY"),
            runtime_dependency: runtime,
            gen_dependency,
            features_note,
        })
    }
}

/// An absolute path as a TOML basic string.
fn toml_path(path: &Path) -> Result<String, Error> {
    let absolute = std::path::absolute(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let text = absolute.to_str().ok_or_else(|| {
        Error::Usage(format!(
            "--orkestra-path {}: the path is not UTF-8, which Cargo.toml cannot hold",
            path.display()
        ))
    })?;
    // A JSON string is a TOML basic string: the same escapes, `\uXXXX` included.
    serde_json::to_string(text).map_err(|e| Error::Internal(e.to_string()))
}

/// Why `name` cannot be the new crate's name, in one line; `None` when it can.
///
/// The rules are cargo's and crates.io's: ASCII letters, digits, `-` and `_`, starting
/// with a letter, at most 64 characters; not a Rust keyword, not a name cargo reserves,
/// not a Windows device name, and not the name of a crate it depends on.
pub fn crate_name_problem(name: &str) -> Option<String> {
    let invalid = |why: String| Some(format!("`{name}` is not a valid crate name: {why}"));
    if name.is_empty() {
        return Some("the crate name is empty; give one, like `my-shop`".to_owned());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return invalid(format!(
            "use ASCII letters, digits, `-` and `_` only (found {:?})",
            c
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return invalid("it must start with a letter".to_owned());
    }
    if name.len() > 64 {
        return invalid(format!(
            "it has {} characters, and crates.io takes at most 64",
            name.len()
        ));
    }
    let lib = name.replace('-', "_");
    if crate::names::ident(&lib) != lib || lib == "_" {
        return invalid("it is a Rust keyword".to_owned());
    }
    if RESERVED.contains(&lib.as_str()) || RESERVED.contains(&name) {
        return invalid("cargo reserves it".to_owned());
    }
    if WINDOWS_DEVICES.contains(&name.to_ascii_lowercase().as_str()) {
        return invalid("it is a Windows device name".to_owned());
    }
    if DEPENDENCIES
        .iter()
        .any(|d| d.replace('-', "_") == lib.to_ascii_lowercase())
    {
        return invalid("the new crate depends on a crate of that name".to_owned());
    }
    None
}

/// What a [`NewProject::create`] wrote so far, to remove again when a later write fails.
#[derive(Default)]
struct Written {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Written {
    fn write(&mut self, root: &Path, file: &ProjectFile) -> Result<(), Error> {
        let path = root.join(&file.path);
        if let Some(parent) = path.parent() {
            self.create_dirs(parent)?;
        }
        std::fs::write(&path, &file.content).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        self.files.push(path);
        Ok(())
    }

    /// `dir` and its missing parents, each remembered.
    fn create_dirs(&mut self, dir: &Path) -> Result<(), Error> {
        if dir.as_os_str().is_empty() || dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.create_dirs(parent)?;
        }
        std::fs::create_dir(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        self.dirs.push(dir.to_owned());
        Ok(())
    }

    /// Removes every file, then every directory, in reverse order (best effort: the
    /// write's own error is the one reported).
    fn undo(&self) {
        for file in self.files.iter().rev() {
            let _ = std::fs::remove_file(file);
        }
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_crate_names_pass() {
        for name in [
            "my-shop",
            "shop",
            "a",
            "my_shop2",
            "Shop-Front",
            "tokio-extra",
        ] {
            assert_eq!(crate_name_problem(name), None, "{name}");
        }
    }

    #[test]
    fn each_invalid_crate_name_says_why_in_one_line() {
        for (name, why) in [
            ("", "empty"),
            ("my shop", "found ' '"),
            ("1shop", "start with a letter"),
            ("-shop", "start with a letter"),
            ("_shop", "start with a letter"),
            ("shöp", "found 'ö'"),
            ("a/b", "found '/'"),
            ("fn", "keyword"),
            ("self", "keyword"),
            ("async", "keyword"),
            ("std", "reserves"),
            ("proc-macro", "reserves"),
            ("deps", "reserves"),
            ("nul", "Windows"),
            ("COM1", "Windows"),
            ("tokio", "depends on"),
            ("serde-json", "depends on"),
            ("Orkestra_Runtime", "depends on"),
        ] {
            let problem = crate_name_problem(name).unwrap_or_else(|| panic!("{name:?} passed"));
            assert!(problem.contains(why), "{name:?}: {problem}");
            assert!(!problem.contains('\n'), "{name:?}: {problem}");
        }
        let long = "a".repeat(65);
        assert!(crate_name_problem(&long).unwrap().contains("at most 64"));
        assert_eq!(crate_name_problem(&"a".repeat(64)), None);
    }

    #[test]
    fn names_become_a_library_and_an_app_prefix() {
        let files = NewProject::new("my-shop2").files().unwrap();
        let file = |path: &str| {
            files
                .iter()
                .find(|f| f.path == Path::new(path))
                .map(|f| f.content.as_str())
                .unwrap_or_else(|| panic!("no {path}"))
        };
        assert!(file("schemas/my-shop2.yaml").contains("namespace: MyShop2.Orders\n"));
        assert!(file("build.rs").contains(".app_prefix(\"MyShop2\")"));
        assert!(file("src/main.rs").contains("my_shop2::start(&bus, &store"));
        assert!(file("Cargo.toml").contains("name = \"my-shop2\"\n"));
    }

    #[test]
    fn the_adapters_choose_the_features_and_the_configuration() {
        let cargo = |project: NewProject| {
            let files = project.files().unwrap();
            let get = |path: &str| {
                files
                    .iter()
                    .find(|f| f.path == Path::new(path))
                    .unwrap()
                    .content
                    .clone()
            };
            (get("Cargo.toml"), get("orkestra.toml"))
        };
        let version = env!("CARGO_PKG_VERSION");
        let (toml, config) = cargo(NewProject::new("a"));
        assert!(toml.contains(&format!("orkestra-runtime = \"{version}\"\n")));
        assert!(toml.contains(&format!("orkestra-gen = \"{version}\"\n")));
        assert!(config.contains("adapter = \"in_process\"") && config.contains("url = \"a.db\""));
        let (toml, config) = cargo(
            NewProject::new("a")
                .bus(BusAdapter::RabbitMq)
                .store(StoreAdapter::Postgres),
        );
        assert!(toml.contains(&format!(
            "orkestra-runtime = {{ version = \"{version}\", default-features = false, features = [\"rabbitmq\", \"postgres\"] }}\n"
        )));
        assert!(config.contains("adapter = \"rabbitmq\"") && config.contains("prefix = \"a\""));
        assert!(config.contains("url = \"postgres://postgres@127.0.0.1:5432/a\""));
        let (toml, config) = cargo(NewProject::new("a").store(StoreAdapter::Memory));
        assert!(toml.contains("default-features = false }"), "{toml}");
        assert!(config.contains("adapter = \"memory\"") && !config.contains("url"));
    }

    #[test]
    fn a_failed_create_removes_what_it_wrote() {
        let root = std::env::temp_dir().join(format!("orkestra-undo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut written = Written::default();
        for path in ["Cargo.toml", "src/lib.rs", "tests/deep/x.rs"] {
            let file = ProjectFile {
                path: PathBuf::from(path),
                content: "x".into(),
            };
            written.write(&root, &file).unwrap();
        }
        assert!(root.join("tests/deep/x.rs").is_file());
        // A file where a directory must go: the write fails, and undo leaves nothing.
        std::fs::write(root.join("blocker"), "").unwrap();
        let blocked = ProjectFile {
            path: PathBuf::from("blocker/y.rs"),
            content: "y".into(),
        };
        assert!(matches!(
            written.write(&root, &blocked),
            Err(Error::Io { .. })
        ));
        std::fs::remove_file(root.join("blocker")).unwrap();
        written.undo();
        assert!(
            !root.exists(),
            "left behind: {:?}",
            std::fs::read_dir(&root).map(|d| d.count())
        );
    }
}
