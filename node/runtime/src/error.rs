//! The runtime's error type: every way loading or running a function can
//! fail, each with the facts a user needs to fix it. Failures of the data
//! it reads and writes are the data layer's [`DataError`], carried as they are.

use std::path::PathBuf;
use std::time::Duration;

pub use wasmgrid_data::Error as DataError;

/// Result with the node's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong loading or running a function, or reading or writing data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a WebAssembly component (or fail validation).
    #[error("invalid component: {reason}")]
    InvalidComponent {
        /// Why the bytes were rejected.
        reason: String,
    },
    /// The component is larger than the node accepts.
    #[error("component is {size} bytes, over the limit of {limit} bytes")]
    ComponentTooLarge {
        /// Size of the upload.
        size: u64,
        /// Largest accepted size.
        limit: u64,
    },
    /// Compiling the component took longer than allowed; the compiler was stopped.
    #[error("compiling the component took longer than {limit:?}; it was stopped")]
    CompileTimeout {
        /// The compile time limit.
        limit: Duration,
    },
    /// The compiler failed, ran out of its memory budget, or crashed.
    #[error("compiling the component failed: {reason}")]
    CompileFailed {
        /// What the compiler reported.
        reason: String,
    },
    /// The compiled component is over what this node's instance pool holds
    /// (a table, memory or instance too large, too many of them): it never
    /// loads here, and is not compiled again.
    #[error("the component cannot run on this node: {reason}")]
    Unloadable {
        /// What wasmtime reported.
        reason: String,
    },
    /// The component imports something the host does not provide.
    #[error("component imports `{import}`, which wasmgrid does not provide ({detail})")]
    MissingImport {
        /// The import's name.
        import: String,
        /// wasmtime's full message.
        detail: String,
    },
    /// The component exports none of the wasmgrid worlds' entry points.
    #[error(
        "component is not a wasmgrid function: it must export `score` (scorer), `run` (mapper), `reduce` (reducer) or `aggregation` (aggregator); it exports [{exports}]"
    )]
    NotAFunction {
        /// What it exports instead.
        exports: String,
    },
    /// The function is of a different kind than the caller needs.
    #[error("this needs a {expected} function, but the component is {}", crate::a(actual))]
    WrongKind {
        /// The kind required.
        expected: &'static str,
        /// The component's kind.
        actual: &'static str,
    },
    /// The call was stopped because its job was cancelled.
    #[error("the call was cancelled")]
    Cancelled,
    /// The guest ran past its time limit and was interrupted.
    #[error("function timed out after {limit:?}")]
    Timeout {
        /// The invocation's time limit.
        limit: Duration,
    },
    /// The guest ran out of fuel.
    #[error("function ran out of fuel ({fuel} units)")]
    FuelExhausted {
        /// The invocation's fuel budget.
        fuel: u64,
    },
    /// The guest tried to grow its memory past its limit.
    #[error("function exceeded its memory limit of {limit} bytes (asked for {requested} bytes)")]
    MemoryLimit {
        /// The function's memory limit.
        limit: u64,
        /// The size it asked to grow to.
        requested: u64,
    },
    /// The guest overflowed its stack (usually unbounded recursion).
    #[error("function overflowed its stack (deep or unbounded recursion)")]
    StackOverflow,
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access...).
    #[error("function trapped: {message}{}", stderr_suffix(.stderr))]
    Trap {
        /// The trap and the guest's panic message where there is one.
        message: String,
        /// The end of what the guest wrote to stderr.
        stderr: String,
    },
    /// The guest returned an error value.
    #[error("function returned an error: {message}")]
    Guest {
        /// The guest's message.
        message: String,
    },
    /// The guest emitted more output than allowed for one invocation.
    #[error("function exceeded its output limit of {limit} bytes")]
    OutputLimit {
        /// The output limit per invocation.
        limit: u64,
    },
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A task of a job failed.
    #[error("partition {index} ({path}): {source}")]
    Partition {
        /// The partition's index.
        index: u32,
        /// Its file (and span).
        path: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
    /// The job's work failed outside the function (its files, its store).
    #[error("{0}")]
    Job(String),
    /// The job cannot run as it was set up (flags that do not fit what the
    /// functions do): retrying will not help.
    #[error("{0}")]
    Setup(String),
    /// An aggregator's group-by does not fit its rows (a column it lacks, a
    /// measure of the wrong type, an integer sum that overflows): the same
    /// on every attempt.
    #[error("aggregating: {0}")]
    Aggregate(String),
    /// The component's `init` failed: it trapped, returned an error or ran
    /// past a limit. The version cannot be served.
    #[error("init failed: {cause}")]
    Init {
        /// How `init` failed (in the message, not a source: an error chain
        /// printed in full would say it twice).
        cause: Box<Error>,
    },
    /// The component's `init` returned with host resources still open, which
    /// a memory snapshot cannot carry into later calls.
    #[error(
        "init returned with host resources still open (an stdout or stderr stream, a gpu tensor...); \
         a snapshot cannot keep them: log with the `log` interface, and make tensors in calls"
    )]
    InitKeptResources,
    /// Data could not be found, decoded or written.
    #[error(transparent)]
    Data(#[from] DataError),
    /// An unexpected failure inside the runtime.
    #[error("runtime error: {0}")]
    Runtime(String),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() { String::new() } else { format!("\nguest stderr:\n{}", stderr.trim_end()) }
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }

    /// The guest passed the host something malformed.
    pub fn bad_output(reason: impl Into<String>) -> Self {
        Error::Data(DataError::BadOutput { reason: reason.into() })
    }

    /// The guest asked for input in a way the partition cannot give.
    pub fn bad_input_request(reason: impl Into<String>) -> Self {
        Error::Data(DataError::BadInputRequest { reason: reason.into() })
    }

    /// A short, stable name for the kind of error, for metrics and scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidComponent { .. } => "invalid_component",
            Error::ComponentTooLarge { .. } => "component_too_large",
            Error::CompileTimeout { .. } => "compile_timeout",
            Error::CompileFailed { .. } => "compile_failed",
            Error::Unloadable { .. } => "unloadable",
            Error::MissingImport { .. } => "missing_import",
            Error::NotAFunction { .. } => "not_a_function",
            Error::WrongKind { .. } => "wrong_kind",
            Error::Timeout { .. } => "timeout",
            Error::Cancelled => "cancelled",
            Error::FuelExhausted { .. } => "fuel_exhausted",
            Error::MemoryLimit { .. } => "memory_limit",
            Error::StackOverflow => "stack_overflow",
            Error::Trap { .. } => "trap",
            Error::Guest { .. } => "guest_error",
            Error::Init { .. } | Error::InitKeptResources => "init_failed",
            Error::OutputLimit { .. } => "output_limit",
            Error::Io { .. } => "io",
            Error::Data(e) => e.kind(),
            Error::Partition { source, .. } => source.kind(),
            Error::Job(_) => "job",
            Error::Setup(_) => "setup",
            Error::Aggregate(_) => "aggregate",
            Error::Runtime(_) => "runtime",
        }
    }
}

impl From<wasmgrid_data::aggregate::AggregateError> for Error {
    fn from(e: wasmgrid_data::aggregate::AggregateError) -> Self {
        Error::Aggregate(e.0)
    }
}
