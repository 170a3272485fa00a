/** @type {AppTypes.Config} */
// OHIF v3 configuration for the Neuro Radix node.
//
// `neuroradix viewer` serves this file at /app-config.js (in place of the one in OHIF's dist/)
// and proxies /dicom-web/* to the node's Orthanc on the same origin, adding Orthanc's basic
// auth: the browser never sees a credential and needs no CORS.
//
// Orthanc 1.10.1 facts behind the data source settings:
// - it does not URL-decode QIDO query strings, so wildcard (`*`) or fuzzy person-name searches
//   match nothing: supportsWildcard and supportsFuzzyMatching are off (the proxy decodes only
//   `%2C`, so that `includefield=a,b` works);
// - it has no rendered/thumbnail endpoint that OHIF can use for every object: thumbnails are
//   made from WADO-RS frames;
// - its BulkDataURIs are absolute URLs on Orthanc's own host:port; the proxy rewrites them to
//   /dicom-web/... so that they stay on this origin.
const origin = window.location.origin;

window.config = {
  name: 'neuroradix',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  experimentalStudyBrowserSort: false,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  allowMultiSelectExport: false,
  // The node's results are AI output, not a diagnosis: the objects say so themselves; OHIF's
  // own "investigational use" dialog would only hide the images in automated checks.
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: {
    interaction: 100,
    thumbnail: 4,
    prefetch: 10,
  },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Neuro Radix node (Orthanc)',
        name: 'orthanc',
        qidoRoot: `${origin}/dicom-web`,
        wadoRoot: `${origin}/dicom-web`,
        wadoUriRoot: `${origin}/wado`,
        qidoSupportsIncludeField: false,
        supportsReject: false,
        supportsStow: false,
        dicomUploadEnabled: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: false,
        staticWado: false,
        singlepart: 'bulkdata,video',
        omitQuotationForMultipartRequest: true,
        bulkDataURI: {
          enabled: true,
          relativeResolution: 'studies',
        },
      },
    },
  ],
  httpErrorHandler: error => {
    console.warn('DICOMweb request failed', error.status);
  },
};
