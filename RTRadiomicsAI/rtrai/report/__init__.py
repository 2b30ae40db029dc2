"""Reports: figures and (later) the HTML page of a case."""
