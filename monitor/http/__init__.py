"""The daemon's one HTTP server: /metrics, /-/healthy, /-/ready, and a small JSON API.

`server.HttpServer` runs a Starlette app (`app.build_app`) under uvicorn in its own thread; the app talks to
the daemon only through `control.Controller`, so it can be tested, and the daemon changed, one without the
other. `ctl.main` is `monitor ctl`, the client of the API.
"""
