"""The web UI (`copymachine ui`): server.py serves static/ and a JSON API; store.py keeps the queue
on disk and runs it through `copymachine queue`."""
