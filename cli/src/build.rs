//! `wasmgrid build`: a function's source built into a component.
//!
//! A Rust project (a directory with a `Cargo.toml`, or the manifest) is
//! built with cargo for `wasm32-wasip2` in release with LTO, and the
//! component's path printed. A Python module with one `@wasmgrid.scorer`,
//! `@wasmgrid.mapper`, `@wasmgrid.reducer` or `@wasmgrid.aggregator`
//! function is built with componentize-py.
//!
//! The WIT package and the Python SDK are embedded in this binary, so the
//! component always matches the host API of the grid that runs it. They
//! are written to a scratch directory with a small entry module that
//! imports the user's module and exports the registered function as the
//! world's `WitWorld`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

const WIT: &str = include_str!("../../sdk/wit/wasmgrid.wit");
const SDK: &str = include_str!("../../sdk/python/wasmgrid/__init__.py");
const WORLDS: [&str; 4] = ["scorer", "mapper", "reducer", "aggregator"];

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// A Rust project (its directory or Cargo.toml), or the Python module (.py) holding the function.
    app: PathBuf,
    /// The component to write [default: cargo's path for Rust; the module's name with .wasm for Python].
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// The world: scorer, mapper, reducer or aggregator [default: from the decorator in the module].
    #[arg(long)]
    world: Option<String>,
    /// The componentize-py program.
    #[arg(long, env = "COMPONENTIZE_PY", default_value = "componentize-py")]
    componentize_py: PathBuf,
}

/// The world named by the module's decorators, if exactly one is used.
fn detect_world(source: &str) -> Option<&'static str> {
    let used: Vec<&'static str> = WORLDS
        .into_iter()
        .filter(|w| source.lines().any(|l| l.trim_start().starts_with(&format!("@wasmgrid.{w}"))))
        .collect();
    match used.as_slice() {
        [one] => Some(one),
        _ => None,
    }
}

/// Whether the module registers an `@wasmgrid.init` function.
fn uses_init(source: &str) -> bool {
    source.lines().any(|l| l.trim_start().starts_with("@wasmgrid.init"))
}

pub fn build(args: BuildArgs) -> Result<()> {
    let manifest = match &args.app {
        dir if dir.is_dir() => Some(dir.join("Cargo.toml")),
        file if file.file_name().is_some_and(|n| n == "Cargo.toml") => Some(file.clone()),
        _ => None,
    };
    if let Some(manifest) = manifest {
        return build_rust(&manifest, args.output.as_deref());
    }
    let source = std::fs::read_to_string(&args.app).with_context(|| format!("reading {}", args.app.display()))?;
    let stem = args.app.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    let valid = stem.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid || args.app.extension().is_none_or(|e| e != "py") {
        bail!("{} is not a Python module name (`name.py`, name a Python identifier)", args.app.display());
    }
    let world = match &args.world {
        Some(w) if WORLDS.contains(&w.as_str()) => w.clone(),
        Some(w) => bail!("unknown world `{w}` (scorer, mapper, reducer or aggregator)"),
        None => match detect_world(&source) {
            Some(w) => w.to_string(),
            None => bail!(
                "{} has no single `@wasmgrid.scorer`, `@wasmgrid.mapper`, `@wasmgrid.reducer` or \
                 `@wasmgrid.aggregator` function; decorate one (or pass --world)",
                args.app.display()
            ),
        },
    };
    let app_dir = match args.app.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let output = args.output.clone().unwrap_or_else(|| PathBuf::from(format!("{stem}.wasm")));

    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let root = scratch.path();
    write(&root.join("wit/wasmgrid.wit"), WIT)?;
    write(&root.join("sdk/wasmgrid/__init__.py"), SDK)?;
    write(
        &root.join("entry/_wasmgrid_entry.py"),
        &format!("import wasmgrid\nimport {stem}\n\nWitWorld = wasmgrid._world(\"{world}\")\n"),
    )?;

    // A module with `@wasmgrid.init` exports `init` (the node snapshots its
    // memory after it); one without is built for the world without `init`,
    // so the grid spends nothing preparing it.
    let wit_world = match uses_init(&source) {
        true => world.clone(),
        false => format!("{world}-calls"),
    };
    let mut cmd = Command::new(&args.componentize_py);
    cmd.arg("-d")
        .arg(root.join("wit"))
        .args(["-w", &wit_world, "componentize", "_wasmgrid_entry", "-p"])
        .arg(root.join("entry"))
        .arg("-p")
        .arg(root.join("sdk"))
        .arg("-p")
        .arg(&app_dir)
        .arg("-o")
        .arg(&output);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "`{}` not found: install it with `pip install componentize-py==0.25.1`, or pass --componentize-py PATH",
            args.componentize_py.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("running {}", args.componentize_py.display())),
    };
    if !out.status.success() {
        bail!(
            "componentize-py failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    let init = if wit_world == world { " with init" } else { "" };
    eprintln!("built {} ({world}{init}, {:.1} MiB)", output.display(), size as f64 / (1 << 20) as f64);
    Ok(())
}

/// Builds the Rust project of `manifest` for `wasm32-wasip2` (release, LTO,
/// one codegen unit) and prints the component's path (after copying it to
/// `output`, when given).
fn build_rust(manifest: &Path, output: Option<&Path>) -> Result<()> {
    if !manifest.is_file() {
        bail!("{} is not a Rust project: it has no Cargo.toml", manifest.parent().unwrap_or(manifest).display());
    }
    let metadata = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
        .arg(manifest)
        .output()
        .context("running cargo (is Rust installed? https://rustup.rs)")?;
    if !metadata.status.success() {
        bail!("cargo metadata failed:\n{}", String::from_utf8_lossy(&metadata.stderr));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).context("reading cargo metadata")?;
    let (package, lib) = component_target(&metadata, manifest)?;
    let target_dir = metadata["target_directory"].as_str().context("cargo metadata names no target directory")?;
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2", "--lib", "-p", &package, "--manifest-path"])
        .arg(manifest)
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .status()
        .context("running cargo build")?;
    if !status.success() {
        let hint = "(the target is added with `rustup target add wasm32-wasip2`)";
        bail!("cargo build of {} failed ({status}) {hint}", manifest.display());
    }
    let built = Path::new(target_dir).join("wasm32-wasip2/release").join(format!("{}.wasm", lib.replace('-', "_")));
    let path = match output {
        Some(out) => {
            std::fs::copy(&built, out).with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
            out.to_path_buf()
        }
        None => built,
    };
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    eprintln!("built {package} ({:.1} MiB)", size as f64 / (1 << 20) as f64);
    println!("{}", path.display());
    Ok(())
}

/// The package of `manifest` and its `cdylib` library's name, from cargo
/// metadata.
fn component_target(metadata: &serde_json::Value, manifest: &Path) -> Result<(String, String)> {
    let wanted = std::fs::canonicalize(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let packages = metadata["packages"].as_array().context("cargo metadata lists no packages")?;
    let package = packages
        .iter()
        .find(|p| p["manifest_path"].as_str().and_then(|m| std::fs::canonicalize(m).ok()).is_some_and(|m| m == wanted))
        .with_context(|| {
            format!("{} is a workspace without a package; name a member's Cargo.toml", manifest.display())
        })?;
    let name = package["name"].as_str().unwrap_or_default().to_string();
    let targets = package["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
    let lib = targets
        .iter()
        .find(|t| t["crate_types"].as_array().is_some_and(|c| c.iter().any(|k| k == "cdylib")))
        .and_then(|t| t["name"].as_str())
        .with_context(|| {
            format!("`{name}` has no cdylib library: a component is built from `[lib] crate-type = [\"cdylib\"]`")
        })?;
    Ok((name, lib.to_string()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::detect_world;

    #[test]
    fn the_world_comes_from_the_one_decorator_used() {
        assert_eq!(detect_world("import wasmgrid\n\n@wasmgrid.scorer\ndef score(rows): ...\n"), Some("scorer"));
        assert_eq!(detect_world("@wasmgrid.mapper\ndef run(p): ...\n"), Some("mapper"));
        assert_eq!(detect_world("@wasmgrid.mapper\ndef a(p): ...\n@wasmgrid.reducer\ndef b(k, v): ...\n"), None);
        assert_eq!(detect_world("def score(rows): ...\n"), None);
    }
}
