"""Cohort specs: the original project's declarative language for designing a cohort (pure).

A spec names **axes** (each a list of levels: template ids, model ids, combo ids, replicate
indices) and **rules** that bound their cross product; compiling it yields rows, one per
combination, with one column per axis. The modules follow the pipeline:

* :mod:`~daydreamd.core.spec.document`: what the edge hands in (the parsed mapping, the lines of
  its keys, the bytes of its ``@file:`` includes) and where a key or value was written;
* :mod:`~daydreamd.core.spec.includes`: ``@file:`` CSV and text includes, with their lines;
* :mod:`~daydreamd.core.spec.parsing`: the mapping checked into a :class:`~.parsing.Spec`
  (axes, tuple-derived axes, rules in declaration order, ``output``);
* :mod:`~daydreamd.core.spec.rules`: the rule pipeline (subsets, ties, pairs with ``balance``,
  tuples) over the axes, into a :class:`~.rules.Design`;
* :mod:`~daydreamd.core.spec.rows`: the columns (synthetic axes expanded back, ``field_order``)
  and the rows, streamed, optionally shuffled by a seed;
* :mod:`~daydreamd.core.spec.catalog`: the ids a spec may name (from the loaded experiment) and
  the check of every column's values against them;
* :mod:`~daydreamd.core.spec.compile`: the whole step, document to rows and problems.
* :mod:`~daydreamd.core.spec.curation`: a spec of curated inputs, the top essays of an earlier cohort.

Reading files and parsing YAML/TOML/JSON happen at the edge (``storage/spec_files``), so this
package uses only the standard library. Errors are :class:`~daydreamd.core.problems.Problem`
values naming the spec file (or the included CSV) and line, the key and the offending value.
"""
