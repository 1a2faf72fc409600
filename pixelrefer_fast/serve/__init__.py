"""An OpenAI-compatible region chat server with request batching (`pixelrefer-fast serve`).

Modules, one job each: `schema` (request body), `errors` (OpenAI error JSON), `media` (data URLs,
images, masks, videos), `parse` (request -> `describe` item), `streaming` (tokens -> text deltas,
stops), `engine` (one batch through `describe`), `scheduler` (batching, queue, cancel, drain),
`responses` (JSON or server-sent events for one request), `metrics` (Prometheus), `app` (FastAPI
routes), `ray_app` (Ray Serve), `cli` (the command), `local` (a server thread on 127.0.0.1),
`loadgen` (a bounded loopback load generator).

Needs the `serve` extra (FastAPI, uvicorn); `ray_app` the `ray` extra. Importing this package
imports neither.
"""
