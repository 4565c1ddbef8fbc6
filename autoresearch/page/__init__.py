"""The report page's stylesheet and script: package data, inlined into report.html by report.py."""
