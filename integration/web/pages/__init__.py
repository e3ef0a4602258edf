"""The server-rendered review pages: worklist, study page and its forms, sign-in; templates and static files."""
