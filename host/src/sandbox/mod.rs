//! The step sandbox: one wasmtime engine, a component cache, and isolated runs.
//!
//! Every wasmtime detail of stepbox lives in this module. The rest of the host
//! sees a [`Sandbox`] that loads [`StepComponent`]s and runs them into a
//! [`RunReport`](crate::RunReport).

mod bindings;
mod cache;
mod capture;
mod component;
mod engine;
mod instance;
mod meter;
mod outbound;
mod run;
mod scratch;
mod scratch_fs;
use self::scratch::ScratchRoot;
mod secrets;
mod step_host;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytesize::ByteSize;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::Linker;

use self::bindings::StepPre;
use self::cache::DiskCache;
use self::component::Loaded;
pub use self::component::{ComponentInfo, Digest, Item, LoadError, StepComponent};
use self::instance::InstanceState;
pub use self::outbound::{
    DEFAULT_HTTP_REQUEST_BODY, DEFAULT_HTTP_REQUESTS, DEFAULT_HTTP_RESPONSE_BODY, HttpGrant, HttpPolicy,
};
pub use self::run::RunOptions;
pub use self::secrets::{REDACTED, Secrets};
pub use self::step_host::{ChildCall, ChildResult, StepHost, add_to_json_integer};
use crate::limits::Limits;

/// Default number of step instances that may run at once; runs beyond it wait.
pub const DEFAULT_MAX_INSTANCES: u32 = 1_000;

/// Default wasm stack of every instance ([`Limits::stack`]).
pub const DEFAULT_MAX_WASM_STACK: ByteSize = crate::limits::DEFAULT_STACK;

/// How many distinct wasm stack sizes one sandbox runs with. wasmtime fixes
/// the stack per engine, so each size beyond the default costs an engine (an
/// instance pool's address space and an epoch ticker thread).
pub const MAX_STACK_SIZES: usize = 4;

/// The smallest and largest per-run wasm stack accepted.
pub const STACK_RANGE: (ByteSize, ByteSize) = (ByteSize::kib(64), ByteSize::mib(64));

/// Default interval of the epoch ticker: the precision of timeouts, and how
/// often a long computation yields its thread to other steps.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(1);

/// Default number of loaded components kept in memory.
pub const DEFAULT_MEMORY_CACHE_ENTRIES: u64 = 256;

/// Runs untrusted step components, each in its own instance under its own limits.
///
/// One `Sandbox` owns one wasmtime engine with a pooling allocator sized for
/// [`SandboxBuilder::max_instances`] concurrent instances, an epoch ticker
/// thread, and the component caches. Clones share all of it.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use stepbox::{RunOptions, Sandbox};
///
/// let sandbox = Sandbox::builder().cache_dir(".stepbox/cache").build()?;
/// let hello = sandbox.load_file("hello.wasm")?;
/// let report = sandbox.run(&hello, br#"{"name":"world"}"#, RunOptions::default()).await;
/// println!("{}: {:?}", report.outcome, report.usage);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<InstanceState>,
    /// Engines for runs with another stack size than the default, by size.
    stack_tiers: Mutex<HashMap<u64, Arc<StackTier>>>,
    /// What built the default engine, to build the others alike.
    settings: SandboxBuilder,
    memory_cache: moka::sync::Cache<Digest, StepComponent>,
    disk_cache: Option<DiskCache>,
    defaults: Limits,
    /// One permit per pool slot: runs wait here instead of failing on a full pool.
    permits: Semaphore,
    max_instances: u32,
    max_memory: u64,
    scratch: ScratchRoot,
    /// Whether `scratch` is on a memory file system (its files take RAM).
    scratch_in_memory: bool,
    /// The host descriptors all instances together may hold.
    fds: Arc<meter::FdBudget>,
}

/// Configures a [`Sandbox`]. Everything is denied to guests by default; what
/// is configurable here is capacity, default limits and caching.
///
/// Defaults: [`DEFAULT_MAX_INSTANCES`] instances, linear memory up to 4 GiB per
/// instance (the limit actually enforced is the run's [`Limits::memory`]),
/// [`DEFAULT_MAX_WASM_STACK`], [`DEFAULT_EPOCH_TICK`], [`Limits::default`],
/// no disk cache, [`DEFAULT_MEMORY_CACHE_ENTRIES`] components in memory, and
/// temporary directories under the system temporary directory.
///
/// # Examples
///
/// ```
/// use bytesize::ByteSize;
/// use stepbox::{Limits, Sandbox};
///
/// let sandbox = Sandbox::builder()
///     .max_instances(64)
///     .default_limits(Limits { memory: ByteSize::mib(16), ..Limits::default() })
///     .build()?;
/// assert_eq!(sandbox.default_limits().memory, ByteSize::mib(16));
/// # Ok::<(), stepbox::sandbox::SandboxError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    max_instances: u32,
    max_memory_per_instance: ByteSize,
    epoch_tick: Duration,
    defaults: Limits,
    cache_dir: Option<PathBuf>,
    memory_cache_entries: u64,
    scratch_parent: Option<PathBuf>,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        SandboxBuilder {
            max_instances: DEFAULT_MAX_INSTANCES,
            max_memory_per_instance: ByteSize::gib(4),
            epoch_tick: DEFAULT_EPOCH_TICK,
            defaults: Limits::default(),
            cache_dir: None,
            memory_cache_entries: DEFAULT_MEMORY_CACHE_ENTRIES,
            scratch_parent: None,
        }
    }
}

impl SandboxBuilder {
    /// How many instances may run at once (the pool is sized for it); further
    /// runs wait for a slot, and their wait is reported as queue time.
    pub fn max_instances(mut self, n: u32) -> Self {
        self.max_instances = n.max(1);
        self
    }

    /// The largest linear memory any instance may ever have: the size of a
    /// pool slot. Per-run memory limits above it are capped to it.
    pub fn max_memory_per_instance(mut self, size: ByteSize) -> Self {
        self.max_memory_per_instance = size;
        self
    }

    /// The default wasm stack of every instance (the same as the `stack` of
    /// [`SandboxBuilder::default_limits`]); unbounded recursion ends in a
    /// [`StackOverflow`](crate::Outcome::StackOverflow) outcome at this depth.
    pub fn max_wasm_stack(mut self, size: ByteSize) -> Self {
        self.defaults.stack = size;
        self
    }

    /// How often the epoch ticker fires (see [`DEFAULT_EPOCH_TICK`]).
    pub fn epoch_tick(mut self, tick: Duration) -> Self {
        self.epoch_tick = tick.max(Duration::from_micros(100));
        self
    }

    /// The limits of a run that does not override them.
    pub fn default_limits(mut self, limits: Limits) -> Self {
        self.defaults = limits;
        self
    }

    /// Keeps precompiled components in `dir`, so a restarted host skips compilation.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// How many loaded components stay in memory.
    pub fn memory_cache_entries(mut self, n: u64) -> Self {
        self.memory_cache_entries = n;
        self
    }

    /// Where instances' temporary directories are created (a fresh
    /// subdirectory of it, removed when the sandbox is dropped).
    ///
    /// By default: `/dev/shm` where it is a writable directory (a memory file
    /// system: creating and removing a directory per run costs a few
    /// microseconds there, against tens on a disk file system), else the
    /// system temporary directory. Steps that stage large files should be
    /// given a disk directory here; files count against the file system
    /// they are on, and no per-step size quota is enforced.
    pub fn scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch_parent = Some(dir.into());
        self
    }

    /// Builds the engine, starts the epoch ticker and prepares the caches.
    ///
    /// # Errors
    ///
    /// [`SandboxError`] when the engine cannot be created (for example the pool
    /// does not fit in the address space) or a directory cannot be created.
    pub fn build(self) -> Result<Sandbox, SandboxError> {
        let (engine, linker) = engine::build(&self, self.defaults.stack)?;
        let disk_cache = self
            .cache_dir
            .as_deref()
            .map(|dir| {
                DiskCache::open(dir, &engine).map_err(|source| SandboxError::Directory {
                    path: dir.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let parent = self.scratch_parent.clone().unwrap_or_else(default_scratch_parent);
        let scratch = ScratchRoot::create(&parent)
            .map_err(|(path, source)| SandboxError::Directory { path, source })?;
        let scratch_in_memory = scratch::is_memory_backed(scratch.path());
        let fds = Arc::new(meter::FdBudget::new(guest_descriptors(self.max_instances)));
        Ok(Sandbox {
            inner: Arc::new(Inner {
                engine,
                linker,
                memory_cache: moka::sync::Cache::new(self.memory_cache_entries),
                disk_cache,
                defaults: self.defaults,
                permits: Semaphore::new(self.max_instances as usize),
                max_instances: self.max_instances,
                stack_tiers: Mutex::new(HashMap::new()),
                max_memory: self.max_memory_per_instance.as_u64(),
                scratch,
                scratch_in_memory,
                fds,
                settings: self,
            }),
        })
    }
}

/// Why a [`Sandbox`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// wasmtime refused the configuration.
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    /// A cache or scratch directory could not be created.
    #[error("cannot create directory `{}`: {source}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Sandbox {
    /// A builder with the documented defaults.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// How many instances may run at once; further runs wait.
    pub fn max_instances(&self) -> u32 {
        self.inner.max_instances
    }

    /// The limits a run gets when its [`RunOptions`] do not override them.
    pub fn default_limits(&self) -> Limits {
        self.inner.defaults
    }

    /// The directory under which instances' temporary directories are
    /// created; it is empty whenever no step is running.
    pub fn scratch_dir(&self) -> &Path {
        self.inner.scratch.path()
    }

    /// Whether the scratch directory is on a memory file system (`tmpfs`):
    /// then what steps keep in `/tmp` takes RAM, and a scheduler should
    /// count each step's [`Limits::scratch`] against its memory budget.
    pub fn scratch_in_memory(&self) -> bool {
        self.inner.scratch_in_memory
    }

    /// How many host file descriptors all steps together may hold (files
    /// and directories they open). Past it, a step's open fails, and the
    /// step ends in [`HandleLimit`](crate::Outcome::HandleLimit): the rest
    /// of the process's descriptors stay for the host's journal, sockets and
    /// the instances themselves.
    pub fn guest_descriptors(&self) -> u64 {
        self.inner.fds.limit()
    }

    /// Loads a component file; see [`Sandbox::load_bytes`].
    ///
    /// # Errors
    ///
    /// [`LoadError::Read`] if the file cannot be read, and the errors of
    /// [`Sandbox::load_bytes`].
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<StepComponent, LoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(&path.display().to_string(), &bytes)
    }

    /// Loads a component: from the memory cache when the same bytes were
    /// loaded before, else from the disk cache, else by compiling it (tens of
    /// milliseconds: call this from a blocking context, such as
    /// `tokio::task::spawn_blocking`, in an async service). The component is
    /// checked against the step world and pre-instantiated, so a run only
    /// instantiates.
    ///
    /// # Errors
    ///
    /// [`LoadError`] when the bytes are not a component, do not compile, or do
    /// not fit the step world.
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<StepComponent, LoadError> {
        let digest = Digest::of(bytes);
        if let Some(hit) = self.inner.memory_cache.get(&digest) {
            return Ok(hit);
        }
        let component = self.compile_cached(name, digest, bytes)?;
        let pre = component::pre_instantiate(&self.inner.linker, name, &component)?;
        let loaded = StepComponent {
            inner: Arc::new(Loaded {
                digest,
                name: name.to_owned(),
                pre,
            }),
        };
        self.inner.memory_cache.insert(digest, loaded.clone());
        Ok(loaded)
    }

    /// Describes a component: its imports and exports, and whether (or why
    /// not) it fits the step world.
    ///
    /// # Errors
    ///
    /// [`LoadError`] when the bytes are not a component or do not compile; a
    /// component for another world is described, with its problems listed.
    pub fn inspect(&self, name: &str, bytes: &[u8]) -> Result<ComponentInfo, LoadError> {
        let digest = Digest::of(bytes);
        let component = self.compile_cached(name, digest, bytes)?;
        let (imports, exports) = component::describe(&self.inner.engine, &component);
        let problems = match component::pre_instantiate(&self.inner.linker, name, &component) {
            Ok(_) => Vec::new(),
            Err(LoadError::WrongWorld { problems, .. }) => problems,
            Err(other) => return Err(other),
        };
        Ok(ComponentInfo {
            digest: digest.to_string(),
            imports,
            exports,
            problems,
        })
    }

    /// The engine and the pre-instantiated `step` for runs with a `stack`
    /// other than the default: built on first use, then cached.
    fn stack_tier(
        &self,
        step: &StepComponent,
        stack: ByteSize,
    ) -> Result<(Engine, StepPre<InstanceState>), String> {
        let (min, max) = STACK_RANGE;
        if stack < min || stack > max {
            return Err(format!(
                "a wasm stack of {} is outside the accepted range {}..={}",
                stack.display().iec(),
                min.display().iec(),
                max.display().iec()
            ));
        }
        let tier = {
            let mut tiers = self
                .inner
                .stack_tiers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match tiers.get(&stack.as_u64()) {
                Some(tier) => Arc::clone(tier),
                None => {
                    if tiers.len() + 1 >= MAX_STACK_SIZES {
                        return Err(format!(
                            "this sandbox already runs with {MAX_STACK_SIZES} wasm stack sizes, the most it supports"
                        ));
                    }
                    let (engine, linker) =
                        engine::build(&self.inner.settings, stack).map_err(|e| e.to_string())?;
                    let tier = Arc::new(StackTier {
                        engine,
                        linker,
                        components: moka::sync::Cache::new(self.inner.settings.memory_cache_entries),
                    });
                    tiers.insert(stack.as_u64(), Arc::clone(&tier));
                    tier
                }
            }
        };
        let digest = step.digest();
        if let Some(pre) = tier.components.get(&digest) {
            return Ok((tier.engine.clone(), pre));
        }
        // The stack size is checked when wasm is entered, not compiled in:
        // code compiled by the default engine is valid in the tier's.
        let fail = |e: wasmtime::Error| {
            format!(
                "cannot prepare `{}` for a {} stack: {e:#}",
                step.name(),
                stack.display().iec()
            )
        };
        let bytes = step
            .inner
            .pre
            .instance_pre()
            .component()
            .serialize()
            .map_err(fail)?;
        // SAFETY: the bytes were just serialized by this sandbox's own engine,
        // whose configuration the tier's engine shares but for the stack size.
        let component =
            unsafe { wasmtime::component::Component::deserialize(&tier.engine, &bytes) }.map_err(fail)?;
        let pre =
            component::pre_instantiate(&tier.linker, step.name(), &component).map_err(|e| e.to_string())?;
        tier.components.insert(digest, pre.clone());
        Ok((tier.engine.clone(), pre))
    }

    fn compile_cached(
        &self,
        name: &str,
        digest: Digest,
        bytes: &[u8],
    ) -> Result<wasmtime::component::Component, LoadError> {
        component::check_preamble(name, bytes)?;
        let engine = &self.inner.engine;
        if let Some(cache) = &self.inner.disk_cache {
            if let Some(hit) = cache.get(engine, &digest) {
                return Ok(hit);
            }
            let compiled = component::compile(engine, name, bytes)?;
            cache.put(&digest, &compiled);
            return Ok(compiled);
        }
        component::compile(engine, name, bytes)
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("defaults", &self.inner.defaults)
            .field("available_instances", &self.inner.permits.available_permits())
            .field("scratch", &self.inner.scratch.path())
            .finish_non_exhaustive()
    }
}

/// An engine for one non-default wasm stack size, and the components
/// pre-instantiated for it.
struct StackTier {
    engine: Engine,
    linker: Linker<InstanceState>,
    components: moka::sync::Cache<Digest, StepPre<InstanceState>>,
}

/// Descriptors of the process kept for the host itself, whatever steps do:
/// the journal and its lock files, listening and client sockets, the
/// runtime's own, and one preopened directory per instance.
const HOST_DESCRIPTOR_RESERVE: u64 = 1024;

/// The descriptors steps may hold together: what the process may open, less
/// the host's reserve (a quarter of the limit, at least
/// [`HOST_DESCRIPTOR_RESERVE`]) and one per instance for its `/tmp`. The soft
/// open-file limit is first raised to the hard one, as servers do, so steps
/// get room without an embedder having to think of it.
fn guest_descriptors(max_instances: u32) -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    let open = getrlimit(Resource::Nofile).current.unwrap_or(1 << 20);
    let reserve = HOST_DESCRIPTOR_RESERVE.max(open / 4) + u64::from(max_instances);
    open.saturating_sub(reserve)
}

/// `/dev/shm` when it is a writable directory, else the system temp dir.
fn default_scratch_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = std::fs::metadata(shm).is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
    if writable {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}
