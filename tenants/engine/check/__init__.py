"""``tenants check`` (issue 14): prove a revision idempotent, reversible and safe for a busy pool before it is
merged. Every rerun, resume and retry re-executes revisions, so the promise each revision makes by hand ("safe
to run again, undone by its downgrade, no long lock on a customer's table") is checked mechanically here.

The package, one module per concern (each imports only the ones listed before it):

* :mod:`.report`: the result as plain data (:class:`~.report.Finding`, :class:`~.report.CheckReport`);
* :mod:`.source`: a revision file read with :mod:`ast` (its functions, the line of an operation, the
  acknowledgments written in it);
* :mod:`.lint`: the static pool-safety lint of the revision's source;
* :mod:`.tsql`: the revision's offline T-SQL, parsed batch by batch with sqlglot, every DDL statement inside an
  existence check;
* :mod:`.data`: rows seeded into every table from its column types, and a count and checksum per table;
* :mod:`.scratch`: the stairway and the reruns, on throwaway databases of each dialect available;
* :mod:`.changed`: which revision files a branch changed (git), for the default selection;
* :mod:`.run`: all of it for a selection of revisions, into one report.
"""
