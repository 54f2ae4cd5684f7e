"""Use a wasmgrid grid from Python: a notebook, a script, a test.

    from wasmgrid.client import Grid

    grid = Grid("http://127.0.0.1:7400")          # the token as the CLI finds it
    grid.deploy("fraud", "fraud.wasm", config={"model": model_json})
    scored = grid.invoke("fraud", df)              # a DataFrame in, a DataFrame out
    job = grid.submit("fraud", input="/data/events", output="/data/scored")
    job.wait()                                     # a progress bar under tqdm
    out = job.to_pandas()

Only the standard library is needed to talk to the grid; pandas (and
pyarrow for Parquet output and ``to_arrow``) to get data frames back, and
tqdm for a progress bar. Errors are :class:`GridError` with the grid's code
and message.
"""

import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["Grid", "Job", "GridError"]

DEFAULT_URL = "http://127.0.0.1:7400"

# How long `invoke` waits for a node to serve a function just deployed.
SERVE_WAIT_S = 60.0


class GridError(Exception):
    """An error the grid answered: its HTTP ``status``, ``code`` and ``message``."""

    def __init__(self, status, code, message, url=""):
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message
        self.url = url


def _token(token):
    """The token as the CLI finds it: given, ``WASMGRID_TOKEN``,
    ``WASMGRID_TOKEN_FILE``, or ``.wasmgrid/admin-token`` (what
    ``wasmgrid dev`` writes)."""
    if token:
        return token
    if os.environ.get("WASMGRID_TOKEN"):
        return os.environ["WASMGRID_TOKEN"]
    path = os.environ.get("WASMGRID_TOKEN_FILE") or os.path.join(".wasmgrid", "admin-token")
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _base(url):
    url = url.rstrip("/")
    return url if "://" in url else "http://" + url


class Grid:
    """A grid's control plane at ``url``, as ``token`` (see :func:`_token`)
    acting on ``tenant`` (the admin token may name one; others act on their
    own)."""

    def __init__(self, url=None, token=None, tenant=None, timeout=60.0):
        self.url = _base(url or os.environ.get("WASMGRID_URL", DEFAULT_URL).split(",")[0])
        self.token = _token(token)
        self.tenant = tenant or os.environ.get("WASMGRID_TENANT")
        self.timeout = timeout

    def __repr__(self):
        return f"Grid({self.url!r})"

    # -- HTTP ---------------------------------------------------------------

    def _request(self, method, url, body=None, content_type="application/json", timeout=None):
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.tenant:
            headers["wasmgrid-tenant"] = self.tenant
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                error = json.loads(payload)["error"]
                raise GridError(e.code, error.get("code", ""), error.get("message", ""), url) from None
            except (ValueError, KeyError, TypeError):
                raise GridError(e.code, "http", payload.decode(errors="replace") or e.reason, url) from None
        except urllib.error.URLError as e:
            raise GridError(0, "unreachable", f"{url}: {e.reason}", url) from None
        return json.loads(payload) if payload else None

    def _api(self, method, path, body=None, **kw):
        return self._request(method, self.url + path, body, **kw)

    # -- functions ----------------------------------------------------------

    def whoami(self):
        """``{"tenant", "role", "token"}`` of this client's token."""
        return self._api("GET", "/v1/whoami")

    def functions(self):
        """The tenant's functions: ``[{"name", "active", "versions", "kind", ...}]``."""
        return self._api("GET", "/v1/functions")["functions"]

    def function(self, name):
        """One function with its versions."""
        return self._api("GET", f"/v1/functions/{_segment(name)}")

    def deploy(self, name, module, config=None, memory=None, timeout_ms=None, replicas=None, public=None,
               artifacts=None, shadow=False, canary=None, threshold=None):
        """Deploys ``module`` (a path to a ``.wasm`` component, or its
        bytes) as a new active version of ``name``, with ``config`` (a dict
        of strings; other values are sent as JSON) and ``artifacts`` (a dict
        of name to file path: files its calls read by name, such as a model;
        each uploaded in chunks unless the tenant has it). With
        ``shadow=True`` the new version scores a copy of live calls instead
        (compared by :meth:`diff`, never returned); with ``canary=10`` it
        answers 10% of calls; ``threshold`` is where :meth:`diff` counts
        disagreements (default 0.5). Returns the function's summary. Waits
        as the CLI does for the version's ``init``."""
        if shadow and canary is not None:
            raise ValueError("a new version is a shadow or a canary, not both")
        if not isinstance(module, (bytes, bytearray)):
            with open(module, "rb") as f:
                module = f.read()
        uploaded = self._api("POST", "/v1/modules", bytes(module), content_type="application/wasm", timeout=180)
        spec = {"module": uploaded["sha256"]}
        if artifacts:
            spec["artifacts"] = {k: self.upload_artifact(path)["sha256"] for k, path in artifacts.items()}
        if config:
            spec["config"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
        for key, value in (("memory", memory), ("timeout_ms", timeout_ms), ("replicas", replicas), ("public", public)):
            if value is not None:
                spec[key] = value
        if shadow or canary is not None:
            spec["trial"] = {
                "mode": "shadow" if shadow else "canary",
                "percent": 100.0 if shadow else float(canary),
                "threshold": 0.5 if threshold is None else float(threshold),
            }
        return self._api("POST", f"/v1/functions/{_segment(name)}/versions", spec, timeout=180)

    def upload_artifact(self, path, chunk=2 << 20):
        """Uploads the file at ``path`` as an artifact, ``chunk`` bytes at a
        time (nothing if the tenant has it); returns ``{"sha256", "size",
        "existed"}``."""
        digest, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            for part in iter(lambda: f.read(1 << 20), b""):
                digest.update(part)
                size += len(part)
        sha256 = digest.hexdigest()
        stored = self._api("GET", "/v1/artifacts")["artifacts"]
        if not any(a["sha256"] == sha256 and a["size"] == size for a in stored):
            offset = 0
            with open(path, "rb") as f:
                while True:
                    part = f.read(chunk)
                    path_q = f"/v1/artifacts/{sha256}/chunks?offset={offset}"
                    offset = self._api("PUT", path_q, part, content_type="application/octet-stream", timeout=300)[
                        "received"
                    ]
                    if len(part) < chunk:
                        break
        return self._api("POST", f"/v1/artifacts/{sha256}", {"size": size}, timeout=300)

    def rollback(self, name, version):
        """Makes ``version`` of ``name`` the active one."""
        return self._api("POST", f"/v1/functions/{_segment(name)}/rollback", {"version": version})

    def promote(self, name, version):
        """Makes ``version`` of ``name`` active: its shadow or canary after
        the trial, which ends."""
        return self._api("POST", f"/v1/functions/{_segment(name)}/promote", {"version": version})

    def diff(self, name):
        """How ``name``'s shadow or canary compares with its active version,
        as every node reported it: ``rows`` compared, per output column in
        ``columns`` the ``count``, ``mean_abs``, ``max_abs``, ``disagree``
        and ``disagree_rate``; ``active`` and ``candidate`` with their
        ``calls``, ``errors``, ``p50_us`` and ``p99_us``."""
        return self._api("GET", f"/v1/functions/{_segment(name)}/diff")

    def abandon(self, name):
        """Ends ``name``'s shadow or canary without promoting it."""
        return self._api("DELETE", f"/v1/functions/{_segment(name)}/trial")

    def remove(self, name):
        """Removes ``name`` and all its versions."""
        return self._api("DELETE", f"/v1/functions/{_segment(name)}")

    # -- calls --------------------------------------------------------------

    def _node(self):
        nodes = self._api("GET", "/v1/nodes")["nodes"]
        alive = [n for n in nodes if n.get("state") == "alive"]
        if not alive:
            raise GridError(503, "no_node", "no node is alive; start one with `wasmgrid node` (or use `wasmgrid dev`)")
        return _base(alive[0]["address"])

    def invoke(self, name, data):
        """Scores ``data`` with function ``name`` on a node's gateway and
        returns the rows with the function's columns added, in the kind
        given: a pandas DataFrame (the version that answered in
        ``attrs["version"]``), a list of row dicts, or one row dict. NaN and
        ``None`` are sent as nulls. Waits (up to a minute) for a node to
        serve a function just deployed."""
        rows, kind = _rows_of(data)
        tenant = self.tenant or self.whoami()["tenant"]
        url = f"{self._node()}/v1/fn/{_segment(tenant)}/{_segment(name)}"
        started = time.monotonic()
        while True:
            try:
                answer = self._request("POST", url, {"rows": rows})
                break
            except GridError as e:
                waiting = time.monotonic() - started < SERVE_WAIT_S
                if waiting and (e.status == 503 and e.code in ("not_ready", "not_placed")):
                    time.sleep(0.1)
                    continue
                if waiting and e.status == 404 and self._known(name):
                    time.sleep(0.1)
                    continue
                raise
        scored = _as_kind(answer["rows"], kind, data)
        if kind == "frame":
            scored.attrs["version"] = answer["version"]
        return scored

    def _known(self, name):
        try:
            self.function(name)
            return True
        except GridError:
            return False

    # -- jobs ---------------------------------------------------------------

    def submit(
        self,
        function,
        input,
        output,
        reduce=None,
        format="jsonl",
        input_format=None,
        schema=None,
        partition_size=None,
        max_attempts=None,
        range=None,
        timeout_ms=None,
        reduce_partitions=None,
        overwrite=False,
        version=None,
    ):
        """Submits a batch job: ``function`` (a scorer or a mapper) over
        ``input`` (a file, directory or glob; absolute, or relative to this
        process's directory for local paths), writing ``output``. ``schema``
        fixes input column types: ``"col:type,..."`` or a dict
        ``{"col": "float"}``. ``version`` runs that version of the function
        (a candidate scored offline) instead of the active one. Returns the
        :class:`Job`."""
        if isinstance(schema, dict):
            schema = ",".join(f"{k}:{v}" for k, v in schema.items())
        request = {
            "function": function,
            "input": _absolute(input),
            "output": _absolute(output),
            "format": format,
            "overwrite": overwrite,
        }
        optional = {
            "reduce": reduce,
            "input_format": input_format,
            "schema": schema,
            "partition_size": partition_size,
            "max_attempts": max_attempts,
            "range": range,
            "timeout_ms": timeout_ms,
            "reduce_partitions": reduce_partitions if reduce else None,
            "version": version,
        }
        request.update({k: v for k, v in optional.items() if v is not None})
        return Job(self, self._api("POST", "/v1/jobs", request, timeout=180))

    def job(self, id):
        """The job ``id``."""
        return Job(self, self._api("GET", f"/v1/jobs/{_segment(id)}"))

    def jobs(self):
        """The tenant's jobs, newest first, as :class:`Job` objects."""
        return [Job(self, info) for info in self._api("GET", "/v1/jobs")["jobs"]]


class Job:
    """A batch job: ``info`` is what the grid last said of it
    (``GET /v1/jobs/{id}``)."""

    def __init__(self, grid, info):
        self.grid = grid
        self.info = info

    def __repr__(self):
        return f"Job({self.id!r}, {self.state})"

    @property
    def id(self):
        return self.info["id"]

    @property
    def state(self):
        """``running``, ``committing``, ``succeeded``, ``failed`` or ``cancelled``."""
        return self.info["state"]

    @property
    def done(self):
        return self.state in ("succeeded", "failed", "cancelled")

    def refresh(self):
        """Asks the grid where the job is; returns ``self``."""
        self.info = self.grid._api("GET", f"/v1/jobs/{_segment(self.id)}")
        return self

    def cancel(self):
        """Cancels the job; returns ``self``."""
        self.info = self.grid._api("POST", f"/v1/jobs/{_segment(self.id)}/cancel")
        return self

    def wait(self, timeout=None, progress=True, poll=0.2):
        """Waits for the job to end, with a progress bar of its tasks (under
        tqdm, when installed and ``progress``). Returns ``self`` once it
        succeeded; raises :class:`GridError` (code ``job_failed`` or
        ``job_cancelled``, the job's error as the message) otherwise, and
        ``TimeoutError`` after ``timeout`` seconds."""
        started = time.monotonic()
        bar = _bar(self) if progress else None
        try:
            while True:
                self.refresh()
                if bar is not None:
                    total = self.info.get("map_tasks", 0) + self.info.get("reduce_tasks", 0)
                    bar.total = max(total, 1)
                    bar.n = self.info.get("map_done", 0) + self.info.get("reduce_done", 0)
                    bar.set_postfix_str(self.state, refresh=False)
                    bar.refresh()
                if self.done:
                    break
                if timeout is not None and time.monotonic() - started > timeout:
                    raise TimeoutError(f"job {self.id} still {self.state} after {timeout} s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()
        if self.state != "succeeded":
            error = self.info.get("error") or self.state
            raise GridError(0, f"job_{self.state}", f"job {self.id} {self.state}: {error}")
        return self

    def logs(self):
        """What the job's latest attempts logged, oldest first, gathered
        from every node: ``[{"node", "stage", "task", "attempt", "error",
        "lines", "stdout", "stderr", ...}]`` (``GET /v1/jobs/{id}/attempts``)."""
        return self.grid._api("GET", f"/v1/jobs/{_segment(self.id)}/attempts")["attempts"]

    def files(self):
        """The output files the job published, in order, from its
        ``_SUCCESS`` manifest: ``[{"name", "rows", ...}]`` with ``path``
        added. Local (or ``file://``) outputs only."""
        directory = _local_dir(self.info["output"])
        with open(os.path.join(directory, "_SUCCESS")) as f:
            manifest = json.load(f)
        files = manifest.get("files", [])
        for entry in files:
            entry["path"] = os.path.join(directory, entry["name"])
        return files

    def to_pandas(self):
        """The job's output as one pandas DataFrame (its files in order)."""
        import pandas as pd

        frames = [_read(pd, f["path"]) for f in self.files() if f.get("rows", 1) > 0]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)

    def to_arrow(self):
        """The job's output as one pyarrow Table (needs pyarrow): Parquet
        files as written, other formats through pandas."""
        import pyarrow as pa

        paths = [f["path"] for f in self.files() if f.get("rows", 1) > 0]
        if paths and all(p.endswith(".parquet") for p in paths):
            import pyarrow.parquet as pq

            return pa.concat_tables([pq.read_table(p) for p in paths])
        return pa.Table.from_pandas(self.to_pandas(), preserve_index=False)


def _read(pd, path):
    if path.endswith(".parquet"):
        return pd.read_parquet(path)
    if path.endswith(".csv"):
        return pd.read_csv(path)
    return pd.read_json(path, lines=True, dtype=False)


def _local_dir(output):
    if output.startswith("file://"):
        return urllib.parse.urlparse(output).path
    if "://" in output:
        raise NotImplementedError(f"reading {output} from Python: only local outputs are read back; use the store's own client")
    return output


def _absolute(path):
    return path if "://" in path else os.path.abspath(path)


def _segment(name):
    return urllib.parse.quote(str(name), safe="")


def _bar(job):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=1, desc=job.id, unit="task")


def _rows_of(data):
    """``data`` as a list of JSON-ready row dicts (NaN and pandas' missing
    values as null, numpy scalars as Python values, as ``wasmgrid.local``
    reads them), and what kind it was."""
    from .local import _value

    if hasattr(data, "to_dict") and hasattr(data, "columns"):
        rows, kind = data.to_dict(orient="records"), "frame"
    elif isinstance(data, dict):
        rows, kind = [data], "row"
    else:
        rows, kind = list(data), "rows"
    return [{str(k): _value(v) for k, v in row.items()} for row in rows], kind


def _as_kind(rows, kind, data):
    if kind == "frame":
        import pandas as pd

        return pd.DataFrame(rows, index=data.index)
    if kind == "row":
        return rows[0]
    return rows
