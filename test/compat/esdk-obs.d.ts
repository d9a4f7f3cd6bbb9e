// esdk-obs-nodejs ships no types; the test treats its client as untyped.
declare module 'esdk-obs-nodejs' {
  const ObsClient: unknown;
  export default ObsClient;
}
