"""The report's stylesheet (plain CSS, embedded in the page)."""

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2329;
       margin: 0 auto; max-width: 1320px; padding: 18px 28px 60px; }
header h1 { font-size: 24px; margin: 4px 0 2px; }
header p { margin: 0 0 8px; color: #56606b; }
h2 { font-size: 19px; margin: 26px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #e3e7eb; }
code { font-size: 90%; }
section { margin-bottom: 8px; }
.row { display: flex; gap: 28px; align-items: flex-start; flex-wrap: wrap; }
.row > div { flex: 0 1 auto; max-width: 880px; }
.row > figure { flex: 1 1 340px; }
p.verdict { margin: 2px 0 10px; font-size: 16px; max-width: 1050px; }
p.lead { max-width: 1050px; margin: 4px 0 10px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 0; }
dl.facts dt { color: #56606b; }
dl.facts dd { margin: 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 9px; }
th { font-weight: 600; background: #f1f3f5; text-align: center; }
td.num { text-align: right; }
td.txt, .left { text-align: left; }
table.headline { max-width: 760px; }
table.headline td { border-bottom: 1px solid #e3e7eb; vertical-align: top; }
table.headline td.big { font-size: 17px; font-weight: 600; }
table.headline .what { display: block; font-weight: 600; }
table.headline .meaning { display: block; color: #56606b; font-size: 13px; }
table.headline tr.beside td { background: #fafbfc; }
table.headline tr.beside td:first-child { padding-left: 22px; }
td.met { color: #13692f; font-weight: 700; }
td.missed { color: #b3261e; font-weight: 700; }
td.none { color: #8a939c; }
table.matrix td, table.matrix th { border: 1px solid #e3e7eb; }
table.matrix th.op { border-bottom: none; }
table.matrix .sep { border-right: 2px solid #c9d0d6; }
table.matrix tr.default td { font-weight: 700; }
table.matrix tr.ref td { color: #56606b; font-style: italic; background: #fafbfc; }
table.matrix small { color: #56606b; font-weight: 400; }
table.compact td, table.compact th, table.long td, table.long th {
  border-bottom: 1px solid #e3e7eb; }
table.long { font-size: 13px; }
.tag { display: inline-block; font-size: 11px; font-weight: 600; color: #3b4a5a;
       background: #e6ecf2; border-radius: 3px; padding: 0 5px; margin-left: 4px;
       font-style: normal; }
.tag.best { background: #fff1c9; }
ul.foot, p.foot { color: #56606b; font-size: 13px; margin: 6px 0; padding-left: 18px; }
p.foot { padding-left: 0; }
figure { margin: 0; }
figure img { width: 100%; height: auto; border: 1px solid #e3e7eb; }
figcaption { font-size: 12px; color: #56606b; }
.figs { display: flex; gap: 20px; flex-wrap: wrap; margin-top: 10px; }
details { margin: 10px 0; }
summary { cursor: pointer; color: #2a5d8f; }
a.csv { margin-right: 10px; }
"""
