//! `wasmgrid new scorer|mapper|aggregate NAME [--lang rust|python]`: a project that
//! builds (`wasmgrid build`), runs on its sample data (`wasmgrid run`) and
//! has a test (`cargo test`, or pytest with `wasmgrid.local`).
//!
//! A Rust project carries its own copy of the SDK (`wasmgrid-sdk/`, the
//! crate and WIT package embedded in this binary), so it builds outside a
//! wasmgrid checkout against exactly the host API of this release.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

const SDK_LIB: &str = include_str!("../../sdk/src/lib.rs");
const SDK_BATCH: &str = include_str!("../../sdk/src/batch.rs");
const SDK_RECORD: &str = include_str!("../../sdk/src/record.rs");
const SDK_GPU: &str = include_str!("../../sdk/src/gpu.rs");
const SDK_AGGREGATE: &str = include_str!("../../sdk/src/aggregate.rs");
const WIT: &str = include_str!("../../sdk/wit/wasmgrid.wit");
const WORKSPACE: &str = include_str!("../../Cargo.toml");

/// What the project's function is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// Adds columns to rows: per request and over every partition of a job.
    Scorer,
    /// Reads a partition and emits records.
    Mapper,
    /// Groups a job's input by key and computes counts, sums, means, min
    /// and max (an aggregator: the grid folds and merges the groups).
    Aggregate,
}

/// The project's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The kind of function.
    template: Template,
    /// The project's name: its directory, crate or module.
    name: String,
    /// The language.
    #[arg(long, default_value = "rust")]
    lang: Lang,
    /// Where to create the project's directory [default: here].
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// Sample input every template runs on: one row has no quantity.
const SAMPLE: &str = "id,price,quantity\n1,2.5,4\n2,10.0,\n3,4.0,3\n4,120.0,2\n";

pub fn new(args: NewArgs) -> Result<()> {
    let name = &args.name;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!("`{name}` is not a project name: lowercase letters, digits, `-` and `_`, starting with a letter");
    }
    let root = args.dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let files = match args.lang {
        Lang::Rust => rust(name, args.template)?,
        Lang::Python => python(name, args.template),
    };
    for (path, text) in &files {
        write(&root.join(path), text)?;
    }
    let commands = commands(name, args.lang, Some(name));
    println!("created {} ({:?} in {:?})", root.display(), args.template, args.lang);
    println!("  build: {}", commands.build);
    println!("  run:   {}", commands.run);
    println!("  test:  {}", commands.test);
    Ok(())
}

/// How a project is built, run on its sample and tested.
struct Commands {
    build: String,
    component: String,
    run: String,
    test: String,
}

/// The [`Commands`] of project `name`, given from its parent directory
/// (`at`: the project's directory) or from within it (`None`).
fn commands(name: &str, lang: Lang, at: Option<&str>) -> Commands {
    let module = name.replace('-', "_");
    let dir = at.map_or(String::new(), |d| format!("{d}/"));
    let here = at.unwrap_or(".");
    let (build, component, test) = match lang {
        Lang::Rust => (
            format!("wasmgrid build {here}"),
            format!("{dir}target/wasm32-wasip2/release/{module}.wasm"),
            at.map_or("cargo test".into(), |d| format!("cargo test --manifest-path {d}/Cargo.toml")),
        ),
        Lang::Python => (
            format!("wasmgrid build {dir}{module}.py -o {module}.wasm"),
            format!("{module}.wasm"),
            format!("python -m pytest {here}"),
        ),
    };
    let run = format!("wasmgrid run {component} --input {dir}sample.csv --output out");
    Commands { build, component, run, test }
}

/// The files of a Rust project.
fn rust(name: &str, template: Template) -> Result<Vec<(String, String)>> {
    let wit_bindgen = WORKSPACE
        .lines()
        .find_map(|l| l.strip_prefix("wit-bindgen = "))
        .context("this build does not know its wit-bindgen version")?;
    let sdk_manifest = format!(
        "[package]\nname = \"wasmgrid-sdk\"\nversion = \"{}\"\nedition = \"2024\"\npublish = false\n\n\
         [dependencies]\nwit-bindgen = {wit_bindgen}\n",
        env!("CARGO_PKG_VERSION")
    );
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
wasmgrid-sdk = {{ path = "wasmgrid-sdk" }}

# `wasmgrid build` builds with this profile: small, fast components.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = "debuginfo"

# A project of its own, even inside another workspace.
[workspace]
"#
    );
    let lib = match template {
        Template::Scorer => RUST_SCORER,
        Template::Mapper => RUST_MAPPER,
        Template::Aggregate => RUST_AGGREGATE,
    };
    Ok(vec![
        ("Cargo.toml".into(), manifest),
        ("src/lib.rs".into(), lib.replace("{name}", name)),
        ("sample.csv".into(), SAMPLE.into()),
        (".gitignore".into(), "/target\n".into()),
        ("README.md".into(), readme(name, template, Lang::Rust)),
        ("wasmgrid-sdk/Cargo.toml".into(), sdk_manifest),
        ("wasmgrid-sdk/src/lib.rs".into(), SDK_LIB.into()),
        ("wasmgrid-sdk/src/batch.rs".into(), SDK_BATCH.into()),
        ("wasmgrid-sdk/src/record.rs".into(), SDK_RECORD.into()),
        ("wasmgrid-sdk/src/gpu.rs".into(), SDK_GPU.into()),
        ("wasmgrid-sdk/src/aggregate.rs".into(), SDK_AGGREGATE.into()),
        ("wasmgrid-sdk/wit/wasmgrid.wit".into(), WIT.into()),
    ])
}

/// The files of a Python project.
fn python(name: &str, template: Template) -> Vec<(String, String)> {
    let module = name.replace('-', "_");
    let (app, test) = match template {
        Template::Scorer => (PYTHON_SCORER, PYTHON_SCORER_TEST),
        Template::Mapper => (PYTHON_MAPPER, PYTHON_MAPPER_TEST),
        Template::Aggregate => (PYTHON_AGGREGATE, PYTHON_AGGREGATE_TEST),
    };
    vec![
        (format!("{module}.py"), app.into()),
        (format!("test_{module}.py"), test.replace("{module}", &module)),
        ("sample.csv".into(), SAMPLE.into()),
        ("README.md".into(), readme(name, template, Lang::Python)),
    ]
}

fn readme(name: &str, template: Template, lang: Lang) -> String {
    let what = match template {
        Template::Scorer => {
            "A wasmgrid scorer: adds `total` = `price` x `quantity` to every row (null where either is)."
        }
        Template::Mapper => {
            "A wasmgrid mapper: emits the rows whose `price` x `quantity` is at least config `min` (default 100)."
        }
        Template::Aggregate => {
            "A wasmgrid aggregator: groups rows by `size` (\"large\" where `price` x `quantity` is at least 100, \
             \"small\" below it, null where either is missing, computed by `prepare`) and gives per group the \
             orders, the quantity, the mean and largest price and the orders under 5. The grid folds and merges \
             the groups: no reducer."
        }
    };
    let Commands { build, component, run, test } = commands(name, lang, None);
    format!(
        "# {name}\n\n{what}\n\n```sh\n{build}\n{run}\n{test}\n```\n\n\
         Deploy it to a grid with `wasmgrid deploy {name} {component}`.\n"
    )
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

const RUST_SCORER: &str = r#"//! {name}: a wasmgrid scorer. Adds column `total` = `price` x `quantity`
//! to every row; a row missing either has a null `total`.

use wasmgrid_sdk::{Batch, BatchBuilder, Scorer};

struct Total;

impl Scorer for Total {
    fn score(rows: Batch) -> Result<Batch, String> {
        // `opt_f64s` gives `None` for a null; `f64s` would refuse the column.
        let price = rows.opt_f64s("price")?;
        let quantity = rows.opt_f64s("quantity")?;
        let total = price.iter().zip(&quantity).map(|(p, q)| Some((*p)? * (*q)?)).collect();
        Ok(BatchBuilder::new(rows.rows).opt_f64("total", total).build())
    }
}

wasmgrid_sdk::export_scorer!(Total, no_init);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_is_price_times_quantity_and_null_where_one_is_missing() {
        let rows = BatchBuilder::new(3)
            .opt_f64("price", vec![Some(2.5), Some(10.0), None])
            .opt_i64("quantity", vec![Some(4), None, Some(3)])
            .build();
        let out = Total::score(rows).expect("scores");
        assert_eq!(out.opt_f64s("total"), Ok(vec![Some(10.0), None, None]));
    }
}
"#;

const RUST_MAPPER: &str = r##"//! {name}: a wasmgrid mapper. Emits `{"id", "total"}` for every row whose
//! `price` x `quantity` is at least config `min` (default 100); rows
//! missing either are skipped.

use wasmgrid_sdk::{Batch, Mapper, Record, config, input, output};

struct Large;

impl Mapper for Large {
    fn run(_partition: u32) -> Result<(), String> {
        let min = match config::get("min") {
            Some(v) => v.parse::<f64>().map_err(|e| format!("config `min` = {v}: {e}"))?,
            None => 100.0,
        };
        for rows in input::batches() {
            for record in large(&rows, min)? {
                output::emit(record);
            }
        }
        Ok(())
    }
}

/// The records for the rows of `rows` whose total is at least `min`.
fn large(rows: &Batch, min: f64) -> Result<Vec<Record>, String> {
    let ids = rows.i64s("id")?;
    let price = rows.opt_f64s("price")?;
    let quantity = rows.opt_f64s("quantity")?;
    let mut out = Vec::new();
    for ((id, p), q) in ids.iter().zip(price).zip(quantity) {
        if let (Some(p), Some(q)) = (p, q)
            && p * q >= min
        {
            out.push(Record::new().int("id", *id).float("total", p * q));
        }
    }
    Ok(out)
}

wasmgrid_sdk::export_mapper!(Large);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgrid_sdk::BatchBuilder;

    #[test]
    fn only_rows_at_or_over_the_minimum_are_emitted() {
        let rows = BatchBuilder::new(3)
            .i64("id", vec![1, 2, 3])
            .opt_f64("price", vec![Some(60.0), Some(500.0), Some(50.0)])
            .opt_i64("quantity", vec![Some(2), None, Some(1)])
            .build();
        let out: Vec<String> = large(&rows, 100.0).expect("rows").into_iter().map(|r| String::from_utf8(r.into_bytes()).expect("utf-8")).collect();
        assert_eq!(out, vec![r#"{"id":1,"total":120.0}"#]);
    }
}
"##;

const PYTHON_SCORER: &str = r#""""A wasmgrid scorer: adds `total` = `price` x `quantity` to every row;
a row missing either has a null (None) `total`."""

import wasmgrid


@wasmgrid.scorer
def score(rows):
    # rows["col"] is the column with None for a null; rows.floats("col")
    # would refuse a column holding one.
    return {"total": [p * q if p is not None and q is not None else None for p, q in zip(rows["price"], rows["quantity"])]}
"#;

const PYTHON_SCORER_TEST: &str = r#"import pandas as pd

from wasmgrid import local

from {module} import score


def test_total_is_price_times_quantity_and_null_where_one_is_missing():
    rows = pd.DataFrame({"price": [2.5, 10.0, None], "quantity": [4, None, 3]})
    out = local.score(score, rows)
    assert out["total"].tolist()[0] == 10.0
    assert out["total"].isna().tolist() == [False, True, True]
"#;

const PYTHON_MAPPER: &str = r#""""A wasmgrid mapper: emits {"id", "total"} for every row whose `price` x
`quantity` is at least config `min` (default 100); rows missing either
are skipped."""

import wasmgrid


@wasmgrid.mapper
def run(partition):
    minimum = float(wasmgrid.config("min", "100"))
    for rows in wasmgrid.batches():
        for i, p, q in zip(rows["id"], rows["price"], rows["quantity"]):
            if p is not None and q is not None and p * q >= minimum:
                wasmgrid.emit({"id": i, "total": p * q})
"#;

const PYTHON_MAPPER_TEST: &str = r#"from wasmgrid import local

from {module} import run


def test_only_rows_at_or_over_the_minimum_are_emitted():
    rows = [
        {"id": 1, "price": 60.0, "quantity": 2},
        {"id": 2, "price": 500.0, "quantity": None},
        {"id": 3, "price": 50.0, "quantity": 1},
    ]
    assert local.map(run, rows).records == [{"id": 1, "total": 120.0}]
"#;

const RUST_AGGREGATE: &str = r#"//! {name}: a wasmgrid aggregator. Groups rows by `size` ("large" where
//! `price` x `quantity` is at least 100, "small" below it, null where either
//! is missing) and gives per group the orders, the quantity, the mean and
//! largest price and the orders under 5. The grid reads the input, folds it
//! and merges the groups of every task; nulls are skipped, as in SQL.

use wasmgrid_sdk::{Aggregation, Aggregator, Batch, BatchBuilder, col};

struct Sizes;

impl Aggregator for Sizes {
    fn aggregation() -> Aggregation {
        Aggregation::by(["size"])
            .count("orders")
            .sum("quantity", "quantity")
            .mean("mean_price", "price")
            .max("max_price", "price")
            .count_if("under_5", col("price").lt(5))
            // `size` is computed from these columns by `prepare`.
            .prepare(["price", "quantity"])
    }

    fn prepare(rows: Batch) -> Result<Batch, String> {
        let price = rows.opt_f64s("price")?;
        let quantity = rows.opt_f64s("quantity")?;
        let size = price
            .iter()
            .zip(&quantity)
            .map(|(p, q)| Some(if (*p)? * (*q)? >= 100.0 { "large" } else { "small" }.to_string()))
            .collect();
        Ok(BatchBuilder::new(rows.rows).opt_str("size", size).build())
    }
}

wasmgrid_sdk::export_aggregator!(Sizes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_large_from_a_total_of_100_and_null_where_one_is_missing() {
        let rows = BatchBuilder::new(3)
            .opt_f64("price", vec![Some(60.0), Some(500.0), Some(50.0)])
            .opt_i64("quantity", vec![Some(2), None, Some(1)])
            .build();
        let out = Sizes::prepare(rows).expect("prepares");
        assert_eq!(out.opt_strs("size"), Ok(vec![Some("large"), None, Some("small")]));
    }
}
"#;

const PYTHON_AGGREGATE: &str = r#""""A wasmgrid aggregator: groups rows by `size` ("large" where `price` x
`quantity` is at least 100, "small" below it, None where either is
missing) and gives per group the orders, the quantity, the mean and largest
price and the orders under 5. The grid reads the input, folds it and
merges the groups of every task; nulls are skipped, as in SQL."""

import wasmgrid


@wasmgrid.prepare(["price", "quantity"])
def size(rows):
    totals = [p * q if p is not None and q is not None else None for p, q in zip(rows["price"], rows["quantity"])]
    return {"size": [None if t is None else "large" if t >= 100 else "small" for t in totals]}


@wasmgrid.aggregator
def sizes():
    return wasmgrid.group_by(
        "size",
        orders=wasmgrid.count(),
        quantity=wasmgrid.sum("quantity"),
        mean_price=wasmgrid.mean("price"),
        max_price=wasmgrid.max("price"),
        under_5=wasmgrid.count(where=wasmgrid.col("price") < 5),
    )
"#;

const PYTHON_AGGREGATE_TEST: &str = r#"import pandas as pd

from wasmgrid import local

from {module} import sizes


def test_groups_by_size_with_nulls_skipped():
    rows = pd.DataFrame({"price": [2.5, 10.0, 4.0, 120.0], "quantity": [4, None, 3, 2]})
    out = local.aggregate(sizes, rows).set_index("size")
    assert out.loc["small"].tolist() == [2, 7, 3.25, 4.0, 2]
    assert out.loc["large"].tolist() == [1, 2, 120.0, 120.0, 0]
    # The order without a quantity has no size; its quantity sum is null.
    missing = out[out.index.isna()].iloc[0]
    assert missing["orders"] == 1 and pd.isna(missing["quantity"]) and missing["mean_price"] == 10.0
"#;
