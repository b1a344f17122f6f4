from .chat_server import server  # noqa: F401 - the fixture, for every test here
