# The front door. `make demo` runs the whole loop on one machine; `make test` runs every test.
PYTHON ?= python3.11
UV ?= $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
ARGS ?=
# Compile the venv's bytecode at install time, whatever the environment says: images that set
# PYTHONDONTWRITEBYTECODE=1 would otherwise recompile Prefect, MLflow and pandas in every new process
# (every flow run is one), which doubles the CPU a run costs before its first task.
export UV_COMPILE_BYTECODE := 1

.PHONY: demo demo-postgres test install uv lint format deploy clean bench system-packages

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv 2>/dev/null \
		|| $(PYTHON) -m pip install --quiet --user uv 2>/dev/null \
		|| { echo "could not install uv with $(PYTHON) -m pip: install it (pipx install uv, or your package manager) and rerun"; exit 1; }

install: uv
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)

demo: install ## Bring up Prefect, MLflow, the router and a worker; run the loop once; print the summary.
	$(UV) run --frozen python -m deployments.demo $(ARGS)

# Debian packages some parts run for real: nginx (the Postgres profile's proxy, its tests) and wrk (the benches).
# Installed when missing and apt-get can (as root); otherwise each test or bench that needs one says so and skips.
SYSTEM_PACKAGES := nginx wrk
system-packages:
	@for pkg in $(SYSTEM_PACKAGES); do \
		command -v $$pkg >/dev/null 2>&1 || [ -x /usr/sbin/$$pkg ] || { command -v apt-get >/dev/null 2>&1 \
			&& { apt-get install -y -qq $$pkg >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 \
				&& apt-get install -y -qq $$pkg >/dev/null 2>&1; }; } && echo "installed $$pkg"; } \
		|| echo "$$pkg is not installed and apt-get could not install it: what needs it skips"; \
	done

demo-postgres: install system-packages ## The same loop on PostgreSQL (Prefect, MLflow, router store), two routers behind nginx.
	$(UV) run --frozen --env-file deployments/profiles/postgres.env python -m deployments.demo $(ARGS)

test: install system-packages ## Unit tests, then the end-to-end loop on real services.
	$(UV) run --frozen pytest

# `make bench`: the quick benchmarks (router under wrk and its ceiling, A/B decision simulations, flow start-up);
# results in bench/results/*.json and the README's performance tables. `make bench BENCH=all` adds the slow one
# (training at scale). bench.fresh_clone (a fresh clone's `make demo`) is run by hand only.
BENCH ?= quick
bench: install system-packages ## Run the benchmarks in bench/ (BENCH=all for the slow ones too).
	$(UV) run --frozen --group bench python -m bench.router $(ARGS)
	$(UV) run --frozen --group bench python -m bench.router --ceiling
	$(UV) run --frozen python -m bench.ab_simulation
	$(UV) run --frozen python -m bench.flow_startup
	@if [ "$(BENCH)" = "all" ]; then $(UV) run --frozen python -m bench.retrain_scale; fi

lint: install
	$(UV) run --frozen ruff check . && $(UV) run --frozen ruff format --check .

format: install
	$(UV) run --frozen ruff check --fix . && $(UV) run --frozen ruff format .

deploy: install ## Deploy the flows and apply the automations to the server PREFECT_API_URL names.
	$(UV) run --frozen prefect --no-prompt deploy --all && $(UV) run --frozen python -m automations.apply

clean: ## Forget all local state (Prefect, MLflow, router log, reports).
	rm -rf .driftloop
