"""Prior studies: finding them in our store and in the configured archives, fetching them, their reports.

Kept free of imports so that importing one module (the sources' model, an archive client) loads no other.
"""
