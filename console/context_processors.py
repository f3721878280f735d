from trading import broker as broker_module


def broker(request):
    """Which broker and mode are in use, for the admin header."""
    return {"broker_description": broker_module.describe()}
