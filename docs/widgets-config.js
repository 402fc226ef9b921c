// Loaded between require.js and the widget manager (docs/_config.yml, nb_ipywidgets_js): the manager finds its own
// files (icon fonts) through require.js module paths, which default to the page's folder; point them at this site's
// copy, next to this script, so nothing is looked up elsewhere.
(function () {
  var base = document.currentScript.src.replace(/[^/]*$/, "");
  require.config({ paths: { "@jupyter-widgets/html-manager/dist": base + "html-manager" } });
})();
