"""`artfs ui`: a read-only local web page over a registry (entities down to one version's
files, its lineage graph, a metric across versions, a diff of two versions).

Nothing here writes to the registry, and every asset is served by the page's own server:
the page works on a machine without network beyond the registry itself.
"""
