"""The `cloister` command line: the composition root, the one package that imports both
the server side (`gateway`) and the client side (`proxy`). Nothing imports it."""
