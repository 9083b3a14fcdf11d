# The beamtwin image: the `beamtwin` command (ingest and twin workers, migrations, API, publishers,
# the Thermo Fisher adapter).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/beamtwin
# Only what the package needs, so a local .venv or test data never enters the image.
COPY pyproject.toml README.md ./
COPY twin ./twin
COPY ingest ./ingest
COPY provenance_store ./provenance_store
COPY api ./api
COPY simulations ./simulations
COPY workers ./workers
COPY adapters ./adapters
COPY beamtwin_cli ./beamtwin_cli
# torch's CPU build first: resolved through pyro-ppl, pip would pull the multi-GB CUDA one
RUN pip install 'torch==2.13.0' --index-url https://download.pytorch.org/whl/cpu
# [tfs]: temscript's HTTP client for the Thermo Fisher adapter (small, BSD-3). Nion's adapter
# runs inside Nion Swift and JEOL's beside PyJEM on the microscope PC, not in this image.
RUN pip install .[tfs] \
    && useradd --system --uid 10001 --no-create-home beamtwin

USER beamtwin
CMD ["beamtwin", "--help"]
