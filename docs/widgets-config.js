// Loaded between require.js and the widget manager (docs/_config.yml, nb_ipywidgets_js). The manager's bundled
// modules find their own files (icon fonts) next to their require.js module URLs, which default to the page's
// folder; point them at this site's copy of the manager, next to this script, so nothing is looked up elsewhere.
(function () {
  var manager = document.currentScript.src.replace(/[^/]*$/, "") + "html-manager";
  require.config({
    paths: {
      "@jupyter-widgets/html-manager/dist": manager,
      "@jupyter-widgets/html-manager": manager + "/html-manager",
      "@jupyter-widgets/base": manager + "/base",
      "@jupyter-widgets/base7": manager + "/base7",
      "@jupyter-widgets/controls": manager + "/controls",
      "@jupyter-widgets/controls7": manager + "/controls7"
    }
  });
})();
