"""pytest configuration shared by `pytest tests/` and `pytest --nbval nbs/`."""


def pytest_collection_modifyitems(items):
    # nbdev-clean removes execution counts, and nbval treats a cell without one as never run:
    # it would then refuse a cell with outputs and skip comparing a cell without. Every committed
    # notebook is executed top to bottom before it is committed, so mark each code cell as run,
    # which makes nbval compare every cell strictly, including cells that must print nothing.
    for item in items:
        if type(item).__name__ == "IPyNbCell" and item.cell.get("cell_type") == "code":
            item.cell.execution_count = 1
